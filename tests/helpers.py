"""Helpers shared by the tests: an independent safetensors reader and input mutators."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from shadowft.scope import in_scope


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    """Independent reader: safetensors' own loader over every shard."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def resize_vocab(src: Path, dst: Path, rows: int) -> Path:
    copy_dir(src, dst)
    state = load_file(dst / "model.safetensors")
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        state[n] = torch.cat([state[n], torch.randn(rows, state[n].shape[1])])
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["vocab_size"] += rows
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def expected_graft(trio, alpha: float, scope: str) -> dict[str, torch.Tensor]:
    b, i, t = load_dir(trio["base"]), load_dir(trio["instruct"]), load_dir(trio["tuned"])
    return {
        n: ((w.float() + alpha * (t[n].float() - b[n].float())).to(w.dtype) if in_scope(n, scope) else w)
        for n, w in i.items()
    }


def make_adapter(model_dir: Path, out: Path, **lora_kwargs) -> Path:
    """A real PEFT adapter on `model_dir` with non-zero random A and B (as after training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
    )
    cfg.update(lora_kwargs)
    peft_model = get_peft_model(model, LoraConfig(**cfg))
    peft_model.save_pretrained(out)
    return out


def peft_merged_state(instruct: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(instruct)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temp dir left behind"


def score_from_samples(eval_dir: Path, suite: str) -> tuple[float, list[int]]:
    """A suite's score recomputed from the per-sample logs an evaluation wrote beside its results.json
    (mean over its tasks of the mean per-sample value of each task's primary `metric,filter`), and the
    number of samples per task: what code that never ran the model could not produce.
    -> (score, [samples per task])"""
    result = json.loads((Path(eval_dir) / "results.json").read_text())
    task_scores, counts = [], []
    for task, info in result["suites"][suite]["tasks"].items():
        metric, _, filt = info["metric"].partition(",")
        rows = [json.loads(x) for x in (Path(eval_dir) / result["samples"][task]).read_text().splitlines()]
        rows = [r for r in rows if r.get("filter", filt) == filt]
        assert rows, f"no per-sample records of {task} under filter {filt}"
        task_scores.append(sum(float(r[metric]) for r in rows) / len(rows))
        counts.append(len(rows))
    return sum(task_scores) / len(task_scores), counts


def free_port() -> int:
    """A TCP port free on localhost right now (bound to 0, read, closed): no fixed port that another
    run or service on the machine may hold."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settled_task_runs(flow_run_id) -> list:
    """The task runs of a finished flow run, read once the server has recorded them all: their states
    arrive through the server's event recorder after the flow returns, so one read right away can miss
    the last ones (a test read `states["evaluate-shadow-ft"]` before it existed). Reads until the count
    is the same and every state final three times running (at most about 30 s)."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    seen, stable, runs = -1, 0, []
    with get_client(sync_client=True) as client:
        for _ in range(100):
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            settled = all(r.state is not None and r.state.is_final() for r in runs)
            stable = stable + 1 if settled and len(runs) == seen else 0
            if stable >= 3:
                break
            seen = len(runs)
            time.sleep(0.3)
    return runs
