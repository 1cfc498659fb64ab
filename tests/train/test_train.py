"""Training on the tiny trio: LoRA and full fine-tuning, outputs, progress, crash and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from shadowft.config import DataConfig, TrainConfig
from shadowft.data import prepare_dataset
from shadowft.errors import OutputExistsError, ShadowFTError
from shadowft.train import complete_checkpoints, train_model

FAST = {"max_steps": 4, "batch_size": 4, "grad_accum": 1, "save_steps": 100, "lr": 1e-3}


@pytest.fixture(scope="module")
def data_dir(llama_trio, tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    rows = [
        {"messages": [{"role": "user", "content": f"what is {a} + {b}?"}, {"role": "assistant", "content": str(a + b)}]}
        for a in range(8)
        for b in range(4)
    ]
    (root / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prepare_dataset(
        DataConfig(sources=[str(root / "d.jsonl")], max_length=64), llama_trio["instruct"], root / "prepared"
    )
    return root / "prepared"


def test_lora_writes_a_peft_adapter(llama_trio, data_dir, tmp_path):
    events = []
    spec = TrainConfig(method="lora", **FAST)
    res = train_model(llama_trio["base"], data_dir, spec, tmp_path / "out", tmp_path / "work", progress=events.append)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss_curve.json",
        "train_result.json",
    ]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["lora_dropout"] == 0.0
    assert set(cfg["target_modules"]) == set(spec.lora_targets)
    tensors = load_file(out / "adapter_model.safetensors")
    assert any("lora_B" in k for k in tensors) and any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)
    assert not any("lm_head" in k or "embed" in k for k in tensors)

    assert res.global_step == 4 and res.resumed_from is None and res.device == "cpu" and res.precision == "fp32"
    assert 0 < res.trainable_params < res.total_params
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [c["step"] for c in curve] == [1, 2, 3, 4] and all(c["loss"] > 0 and "lr" in c for c in curve)
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and all(e["max_steps"] == 4 for e in steps)
    assert steps[-1]["loss"] == pytest.approx(curve[-1]["loss"]) and steps[-1]["epoch"] > 0
    assert not (tmp_path / "work" / "checkpoints").exists()  # removed after success
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt*"))

    with pytest.raises(OutputExistsError):
        train_model(llama_trio["base"], data_dir, spec, out, tmp_path / "work2")


def test_full_writes_a_loadable_model(llama_trio, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = train_model(
        llama_trio["base"], data_dir, TrainConfig(method="full", **FAST), tmp_path / "out", tmp_path / "w"
    )
    out = tmp_path / "out"
    assert res.trainable_params == res.total_params and res.global_step == 4
    assert (out / "model.safetensors").is_file() and not list(out.rglob("*.bin"))
    tuned = load_file(out / "model.safetensors")
    base = load_file(llama_trio["base"] / "model.safetensors")
    assert tuned.keys() == base.keys()
    assert all(t.dtype == torch.float32 for t in tuned.values())  # full_save_dtype=fp32 keeps the delta exact
    assert max((tuned[k] - base[k]).abs().max().item() for k in base) > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and model.config.vocab_size == len(tok)


def test_direct_baseline_trains_instruct(llama_trio, data_dir, tmp_path):
    events = []
    spec = TrainConfig(method="lora", **{**FAST, "max_steps": 3}, logging_steps=2)
    res = train_model(llama_trio["instruct"], data_dir, spec, tmp_path / "o", tmp_path / "w", progress=events.append)
    assert res.global_step == 3 and (tmp_path / "o" / "adapter_model.safetensors").is_file()
    # every step is reported, logged or not; a logged step carries its own loss
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert steps[0]["loss"] is None and steps[1]["loss"] == res.loss_curve[0]["loss"] and res.loss_curve[0]["step"] == 2


def test_bad_lora_targets_and_foreign_work_dir(llama_trio, data_dir, tmp_path):
    with pytest.raises(ShadowFTError, match="no module named qkv_proj") as ei:
        train_model(
            llama_trio["base"], data_dir, TrainConfig(lora_targets=["qkv_proj"], **FAST), tmp_path / "o", tmp_path / "w"
        )
    assert "q_proj" in ei.value.hint

    # A work dir with checkpoints of another job is not resumed silently.
    work = tmp_path / "w2"
    spec = TrainConfig(method="lora", **{**FAST, "save_steps": 2})
    train_model(llama_trio["base"], data_dir, spec, tmp_path / "o2", work, keep_checkpoints=True)
    assert [p.name for p in complete_checkpoints(work / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    with pytest.raises(ShadowFTError, match="different training job .*lr"):
        train_model(llama_trio["base"], data_dir, spec.model_copy(update={"lr": 5e-4}), tmp_path / "o3", work)
    # A crash after the last checkpoint but before the output was published: nothing is retrained.
    again = train_model(llama_trio["base"], data_dir, spec, tmp_path / "o4", work)
    assert again.resumed_from == "checkpoint-4" and again.global_step == 4 and len(again.loss_curve) == 4
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("o2", "o4"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RUNNER = textwrap.dedent(
    """
    import json, os, signal, sys
    from pathlib import Path
    from shadowft.config import TrainConfig
    from shadowft.train import train_model

    model_dir, data_dir, out_dir, work_dir, spec_json, kill_at = sys.argv[1:]
    def progress(event):
        if event["event"] == "step" and event["step"] == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup, no exception handlers
    spec = TrainConfig.model_validate_json(spec_json)
    train_model(Path(model_dir), Path(data_dir), spec, Path(out_dir), Path(work_dir), progress=progress)
    """
)


@pytest.mark.parametrize("method", ["lora", pytest.param("full", marks=pytest.mark.slow)])
def test_resume_after_a_crash_continues_from_the_checkpoint(llama_trio, data_dir, tmp_path, method):
    # dropout > 0 makes the RNG state part of the result: resumption must restore it too
    spec = TrainConfig(method=method, max_steps=6, batch_size=4, grad_accum=2, save_steps=2, lr=1e-3, lora_dropout=0.1)
    work, out = tmp_path / "work", tmp_path / "out"
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    args = [str(llama_trio["base"]), str(data_dir), str(out), str(work), spec.model_dump_json()]
    proc = subprocess.run(
        [sys.executable, str(script), *args, "5"], check=False, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in complete_checkpoints(work / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    assert not out.exists()
    # A checkpoint that was being written when the process died is ignored (trainer_state.json is last).
    (work / "checkpoints" / "checkpoint-6").mkdir()
    (work / "checkpoints" / "checkpoint-6" / "optimizer.pt").write_bytes(b"partial")

    events = []
    res = train_model(llama_trio["base"], data_dir, spec, out, work, progress=events.append)
    assert res.resumed_from == "checkpoint-4" and res.resumed_step == 4 and res.global_step == 6
    assert [e["step"] for e in events if e["event"] == "step"] == [5, 6]  # steps 1-4 were not repeated
    assert [c["step"] for c in res.loss_curve] == [1, 2, 3, 4, 5, 6]  # the curve survives the crash

    # Same seed, no crash: bitwise the same weights (determinism on CPU, and exact resumption).
    ref = train_model(llama_trio["base"], data_dir, spec, tmp_path / "ref", tmp_path / "ref-work")
    assert [c["loss"] for c in ref.loss_curve] == [c["loss"] for c in res.loss_curve]
    assert ref.train_loss == res.train_loss
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(out / name), load_file(tmp_path / "ref" / name)
    assert all(torch.equal(a[k], b[k]) for k in a)
