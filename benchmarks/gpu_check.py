"""GPU check: the project's CUDA paths measured in one command (at most ~8 minutes on one H100 / H200).

No GPU had run any of shadowft's CUDA paths when this was written. This script runs them on a
Qwen3-shaped model of Qwen3-0.6B's published shape (about 0.6B parameters, random init from a config,
nothing downloaded; the embedded toy family's tokenizer, whose ids fit the model's vocabulary) and
writes one JSON with every figure and every version:

  core        (needs only torch, transformers, peft, accelerate, safetensors and pydantic) LoRA and full
              fine-tuning, bf16, sdpa, packing off and on, a fixed number of steps on multi-turn
              conversations built from the family's embedded data: tokens/s, peak memory
              (torch.cuda.max_memory_allocated), MFU against the card's dense bf16 peak, and `shadowft
              plan`'s memory estimate (`shadowft.plan.estimate_for_job`) beside the measured peak.
              The trainer is assembled from the train stage's own seams (`shadowft.train.fit.training_args`,
              `shadowft.train.methods`, the SFT objective's collators and `build_trainer`), fed from
              memory: the stage itself reads its data with `datasets`. Then both results are grafted
              onto an Instruct twin (Base + noise) with `shadowft.graft.graft`.
              This process blocks prefect, trl, lm_eval, datasets and deepspeed (None in sys.modules):
              the core path runs, or fails, without them, and the JSON lists what it imported.
  extra       (a child process; each part runs when its packages import, else it is recorded as
              skipped with the reason) the train stage itself (`shadowft.train.train_model`: data
              prepared with `datasets`, in-process, LoRA, packing); FSDP and DeepSpeed ZeRO-3 with one
              process each through `accelerate launch` (the project's accelerate launcher and shipped
              configs; ZeRO-3 only where deepspeed imports; both need CUDA); and the grafted model
              evaluated with lm-eval's `hf` model on the embedded toy suites.

`--dry-run` runs the same code on the CPU with a tiny model (a few M parameters), float32, 3 steps,
FSDP / ZeRO-3 recorded as skipped (they need CUDA), lm-eval with a small limit, and writes the same
JSON shape (tests/test_gpu_check.py runs it).

Which wheels a bare GPU machine needs beyond torch / transformers / peft / accelerate / safetensors:
benchmarks/gpu_check_wheels.txt (pydantic for the core; datasets, lm-eval, deepspeed for the extras).

Usage: python benchmarks/gpu_check.py [--json PATH] [--steps N] [--workdir DIR]
       python benchmarks/gpu_check.py --dry-run [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

#: packages the core path must run without (absent on the GPU machines): blocked in its process
FORBIDDEN = ("prefect", "trl", "lm_eval", "datasets", "deepspeed")
#: the shadowft modules the core path imports (tests/test_gpu_check.py imports them with FORBIDDEN blocked)
CORE_MODULES = (
    "shadowft.config",
    "shadowft.data",
    "shadowft.plan",
    "shadowft.tiny",
    "shadowft.threads",
    "shadowft.graft",
    "shadowft.train.fit",
    "shadowft.train.job",
    "shadowft.train.methods",
    "shadowft.train.objectives",
    "shadowft.train.resources",
)
#: distributions whose versions the JSON records (read from their metadata: nothing is imported)
VERSIONED = (
    "torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pydantic", "numpy",
    "datasets", "pyarrow", "lm_eval", "deepspeed", "flash_attn", "prefect", "trl",
)  # fmt: skip

#: dense bf16 peak of known cards, TFLOP/s (NVIDIA datasheets; without sparsity), by a part of the
#: name torch.cuda.get_device_name gives; first match wins
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)

#: Qwen/Qwen3-0.6B's published config.json (the architecture only; weights are random)
QWEN3_06B = dict(
    hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
    head_dim=128, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=40960, rms_norm_eps=1e-6,
    rope_theta=1000000.0,
)  # fmt: skip
#: the dry run's model: the same architecture, a few M parameters (vocab above the tokenizer's, as above)
QWEN3_TINY = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=64, vocab_size=4096, tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-6,
    rope_theta=1000000.0,
)  # fmt: skip

#: settings per mode: steps (the first `warmup` are not timed), batch, cutoff, samples, eval limit
MODES: dict[str, dict[str, Any]] = {
    "gpu": dict(model=QWEN3_06B, steps=30, warmup=5, batch=8, max_length=1024, turns=(8, 48), samples=400,
                device="cuda", precision="bf16", extra_steps=10, eval_limit=50, eval_batch=16),
    "dry-run": dict(model=QWEN3_TINY, steps=3, warmup=1, batch=4, max_length=256, turns=(2, 10), samples=24,
                    device="cpu", precision="fp32", extra_steps=2, eval_limit=3, eval_batch=4),
}  # fmt: skip
EVAL_SUITES = "toy-math,toy-domain"


# -- the process: what it may import, what it ran on --------------------------------------------------------


def block_forbidden() -> None:
    """Make FORBIDDEN unimportable here (`import x` raises, `importlib.util.find_spec(x)` is None, so
    transformers / accelerate see them as not installed), as on a GPU machine that lacks them."""
    for name in FORBIDDEN:
        if sys.modules.get(name) is None:
            sys.modules[name] = None  # type: ignore[assignment]


def imported_distributions() -> list[str]:
    """The installed distributions this process has imported something from (the import closure so far)."""
    owners = metadata.packages_distributions()
    tops = {name.split(".")[0] for name, mod in list(sys.modules.items()) if mod is not None}
    return sorted({d for t in tops for d in owners.get(t, ())})


def dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def bf16_peak(card: str) -> tuple[float | None, str]:
    """(dense bf16 TFLOP/s, where it came from) for a card name; (None, 'unknown') for others."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in card:
            return tflops, f"datasheet ({key})"
    return None, "unknown"


def environment(device: str) -> dict[str, Any]:
    """Versions, the card and the machine: everything a figure depends on."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {name: dist_version(name) for name in VERSIONED},
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": driver_version(),
        "device": device,
    }
    env["versions"]["shadowft"] = __import__("shadowft").__version__
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        peak, source = bf16_peak(props.name)
        env["card"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
            "bf16_peak_tflops": peak,
            "bf16_peak_source": source,
        }
    else:
        env["card"] = {"name": "cpu", "bf16_peak_tflops": None, "bf16_peak_source": "unknown"}
    return env


# -- model and data --------------------------------------------------------------------------------------------


def family_instruct() -> Path:
    """The embedded family's Instruct dir: its tokenizer (ChatML template) tokenizes everything here."""
    from shadowft.zoo.shipped import SHIPPED_ROOT

    found = sorted(p.parent for p in SHIPPED_ROOT.glob("*/instruct/tokenizer.json"))
    if not found:
        raise SystemExit(f"no shipped toy family under {SHIPPED_ROOT}: the check tokenizes with its tokenizer")
    return found[0]


def build_models(work: Path, shape: dict[str, Any], precision: str) -> dict[str, Any]:
    """Base (random init from the config) and Instruct (Base + noise, sigma about 0.03), saved as HF dirs
    in the training dtype with the family's tokenizer (`shadowft.tiny`'s builders)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config

    from shadowft.tiny import perturb, random_model, save_model

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(family_instruct()))
    if len(tok) > shape["vocab_size"]:
        raise SystemExit(f"the tokenizer ({len(tok)} ids) does not fit the model's vocabulary ({shape['vocab_size']})")
    config = Qwen3Config(
        **shape, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None, use_cache=True
    )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = random_model(config, seed=0)
    paths = {"base": save_model(model.to(dtype), tok, work / "base")}
    perturb(model, 0.075, seed=1)
    paths["instruct"] = save_model(model.to(dtype), tok, work / "instruct")
    del model
    gc.collect()
    from shadowft.plan import model_shape

    ms = model_shape(paths["base"])
    return {
        "config": {"model_type": "qwen3", **shape},
        "params": ms.params,
        "matmul_params": matmul_params(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "tokenizer": f"{family_instruct().parent.name}/instruct ({len(tok)} ids)",
        "build_s": round(time.perf_counter() - t0, 2),
        "paths": {k: str(v) for k, v in paths.items()},
    }


def matmul_params(shape: dict[str, Any]) -> int:
    """Parameters that take part in a matrix product per token: the layers' projections and the LM head
    (the embedding lookup is no product; a tied head is one)."""
    h, inter, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q, kv = shape["num_attention_heads"] * shape["head_dim"], shape["num_key_value_heads"] * shape["head_dim"]
    return layers * (h * q + 2 * h * kv + q * h + 3 * h * inter) + shape["vocab_size"] * h


def build_data(work: Path, mode: dict[str, Any]) -> Path:
    """Multi-turn conversations from the family's embedded data (system + k user/assistant exchanges, k
    random in `turns`): lengths from a fraction of the cutoff to past it, so padding has work to waste
    and packing has something to save. Written as JSON lines (the data stage reads the same file)."""
    src = family_instruct().parent / "data"
    rows = []
    for name in ("domain.jsonl", "general.jsonl"):
        rows += [json.loads(line) for line in (src / name).read_text().splitlines() if line.strip()]
    rng = random.Random(0)
    rng.shuffle(rows)
    out = work / "conversations.jsonl"
    lo, hi = mode["turns"]
    with out.open("w") as fh:
        i = 0
        for _ in range(mode["samples"]):
            k = rng.randint(lo, hi)
            msgs = [m for m in rows[i % len(rows)]["messages"] if m["role"] == "system"][:1]
            for r in (rows[(i + j) % len(rows)] for j in range(k)):
                msgs += [m for m in r["messages"] if m["role"] != "system"]
            i += k
            fh.write(json.dumps({"messages": msgs}) + "\n")
    return out


def tokenize(source: Path, tok_dir: Path, max_length: int, packing: bool) -> tuple[list[dict[str, list[int]]], Any]:
    """The data stage's tokenization (`shadowft.data.tokenized_samples`: chat template, labels on the
    assistant tokens, cutoff) without its `datasets` output: rows in memory."""
    from shadowft.config import DataConfig
    from shadowft.data import load_tokenizer, tokenized_samples

    spec = DataConfig(sources=[str(source)], max_length=max_length, overlong="truncate", packing=packing)
    tok = load_tokenizer(tok_dir)
    ids, labels, _ = tokenized_samples(spec, tok)
    return [{"input_ids": a, "labels": b} for a, b in zip(ids, labels)], tok


# -- core: one training run ------------------------------------------------------------------------------------


class CountingCollator:
    """The objective's collator, counting the real (non-pad) and the computed tokens of every batch."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.real, self.computed = inner, [], []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        self.real.append(int(mask.sum()) if mask is not None else int(ids.numel()))
        self.computed.append(int(ids.numel()))
        return batch


def step_timer(device: str) -> Any:
    """A Trainer callback with the wall time at the end of every optimizer step (the device synchronized)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.start = 0.0

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if device == "cuda":
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    return StepTimer()


def flops_per_token(model: dict[str, Any], method: str, trainable: int, mean_len: float) -> float:
    """Model FLOPs per trained token (PaLM's convention, attention not halved for causality):
    full 6N + 12·L·H·Q·T; LoRA 4N (forward + input gradients of the frozen weights) + 6·N_lora + 12·L·H·Q·T,
    with N the matmul parameters and T the mean sequence length (packed conversations attend within
    themselves, so T is the conversation's length either way)."""
    cfg = model["config"]
    n = model["matmul_params"]
    attn = 12 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"] * mean_len
    return (6 * n if method == "full" else 4 * n + 6 * trainable) + attn


def train_run(
    method: str,
    packing: bool,
    rows: list[dict[str, list[int]]],
    tok: Any,
    model: dict[str, Any],
    mode: dict,
    work: Path,
) -> dict[str, Any]:
    """One fixed-length training run, assembled as the train stage's fit assembles it; the output saved."""
    import torch
    from transformers import AutoModelForCausalLM, PrinterCallback

    from shadowft.config import TrainConfig
    from shadowft.plan import estimate_for_job
    from shadowft.threads import resolve_threads, thread_limit
    from shadowft.train.fit import check_packing, training_args
    from shadowft.train.job import TrainJob
    from shadowft.train.methods import get_method
    from shadowft.train.objectives import TrainerParts, get_objective
    from shadowft.train.resources import resolve_attn_implementation, resolve_launch

    device, precision = mode["device"], mode["precision"]
    name = f"{method}-{'packed' if packing else 'padded'}"
    run_dir = work / name
    data_dir = run_dir / "data"  # stats.json only: what `shadowft plan` reads of a prepared dataset
    data_dir.mkdir(parents=True)
    lengths = [len(r["input_ids"]) for r in rows]
    (data_dir / "stats.json").write_text(json.dumps({"longest": max(lengths), "packing": packing}))
    spec = TrainConfig(
        method=method,
        max_steps=mode["steps"],
        batch_size=mode["batch"],
        grad_accum=1,
        precision=precision,
        attn_implementation="sdpa",
        save_steps=10**6,
        logging_steps=1,
        warmup_ratio=0.0,
    )
    base = Path(model["paths"]["base"])
    job = TrainJob(base, data_dir, run_dir / "work", spec, device, precision)
    plan = resolve_launch(spec)
    est = estimate_for_job(base, data_dir, spec, plan)

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    objective, trained = get_objective("sft"), get_method(method)
    attn = resolve_attn_implementation(spec.attn_implementation, device)
    lm = AutoModelForCausalLM.from_pretrained(str(base), dtype=trained.load_dtype(precision), attn_implementation=attn)
    if packing:
        check_packing(lm, attn)
        lm.config.use_cache = False
    lm = trained.prepare(lm, spec)
    n_trainable = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in lm.parameters())
    timer = step_timer(device)
    parts = TrainerParts(
        model=lm,
        tokenizer=tok,
        dataset=rows,
        args=training_args(job),
        callbacks=[timer],
        device=device,
        spec=spec,
        data_dir=data_dir,
        packing=packing,
    )
    trainer = objective.build_trainer(parts)
    trainer.remove_callback(PrinterCallback)  # as the stage's fit: the figures go to the JSON
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    load_s = time.perf_counter() - t0
    with thread_limit(resolve_threads(spec.threads, n_total)):
        out = trainer.train()
    train_s = time.perf_counter() - timer.start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    reserved = torch.cuda.max_memory_reserved() if device == "cuda" else None

    steps, w = len(timer.ends), mode["warmup"]
    real, computed = counter.real[:steps], counter.computed[:steps]
    timed_s = timer.ends[-1] - timer.ends[w - 1]
    tokens = sum(real[w:])
    mean_len = statistics.mean(lengths)
    fpt = flops_per_token(model, method, n_trainable, mean_len)
    tps = tokens / timed_s
    peak_tflops = ENV["card"]["bf16_peak_tflops"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    save_dir = None
    if not packing:  # the padded runs' results are grafted
        save_dir = run_dir / "out"
        save_dir.mkdir()
        trained.save(trainer.model, tok, spec, base, save_dir)
    del trainer, lm, out
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "name": name,
        "status": "ok",
        "method": method,
        "packing": packing,
        "precision": precision,
        "attn_implementation": attn,
        "steps": steps,
        "timed_steps": steps - w,
        "batch_size": spec.batch_size,
        "trainable_params": n_trainable,
        "total_params": n_total,
        "tokens_timed": tokens,
        "tokens_computed_timed": sum(computed[w:]),
        "padding_overhead": round(sum(computed[w:]) / max(1, tokens) - 1, 4),
        "tokens_per_s": round(tps, 1),
        "step_s_median": round(statistics.median(b - a for a, b in zip(timer.ends[w - 1 :], timer.ends[w:])), 4),
        "flops_per_token": fpt,
        "model_tflops": round(tps * fpt / 1e12, 3),
        "mfu": round(tps * fpt / (peak_tflops * 1e12), 4) if peak_tflops and device == "cuda" else None,
        "peak_memory_allocated_bytes": peak,
        "peak_memory_reserved_bytes": reserved,
        "plan_estimate": {k: v for k, v in est.to_dict().items() if k not in ("model",)},
        "plan_total_over_allocated": round(est.total / peak, 3) if peak else None,
        "plan_total_less_overhead_over_allocated": round((est.total - est.overhead) / peak, 3) if peak else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "load_s": round(load_s, 2),
        "train_s": round(train_s, 2),
        "out": str(save_dir) if save_dir else None,
    }


def graft_results(model: dict[str, Any], runs: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    """Each method's update grafted onto Instruct: the full run as (Base, tuned Base), LoRA as its adapter."""
    from shadowft.graft import graft

    out: dict[str, Any] = {}
    for run in runs:
        if run.get("status") != "ok" or run["packing"] or run["method"] in out:
            continue
        dest = work / f"grafted-{run['method']}"
        kw = (
            {"adapter": run["out"]}
            if run["method"] == "lora"
            else {"base": model["paths"]["base"], "tuned": run["out"]}
        )
        try:
            r = graft(model["paths"]["instruct"], dest, scope="all", **kw)
            out[run["method"]] = {"status": "ok", "out": str(dest), **r.to_dict()}
        except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
            out[run["method"]] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return out


# -- extra: the parts that need datasets / deepspeed / lm-eval (a child process) ------------------------------


def missing(*modules: str) -> str | None:
    """Why a part cannot run here (a package that does not import), or None."""
    import importlib.util

    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(absent)} not importable (carry it: benchmarks/gpu_check_wheels.txt)" if absent else None


class GpuMemorySampler:
    """Peak of nvidia-smi's memory.used for GPU 0 while a launched job runs (its processes are not ours)."""

    def __init__(self) -> None:
        self.peak_mib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--id=0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                used = int(out.stdout.strip().splitlines()[0])
                self.peak_mib = max(self.peak_mib or 0, used)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def stage_train(state: dict[str, Any], name: str, data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The train stage itself (`train_model`) on the prepared data, with `overrides` of the train section."""
    from shadowft.config import TrainConfig
    from shadowft.train import train_model

    mode = state["mode"]
    spec = TrainConfig(
        max_steps=mode["extra_steps"],
        batch_size=mode["batch"],
        precision=mode["precision"],
        attn_implementation="sdpa",
        save_steps=10**6,
        warmup_ratio=0.0,
        **overrides,
    )
    work = Path(state["work"]) / f"stage-{name}"
    sampler = GpuMemorySampler() if mode["device"] == "cuda" else None
    t0 = time.perf_counter()
    try:
        if sampler:
            with sampler:
                r = train_model(Path(state["model"]["paths"]["base"]), data_dir, spec, work / "out", work / "work")
        else:
            r = train_model(Path(state["model"]["paths"]["base"]), data_dir, spec, work / "out", work / "work")
    except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[-4000:], "wall_s": time.perf_counter() - t0}
    d = r.to_dict()
    d.pop("out_dir", None)
    return {
        "status": "ok",
        "wall_s": round(time.perf_counter() - t0, 2),
        "gpu_memory_used_peak_mib": sampler.peak_mib if sampler else None,
        **d,
    }


def extra_phase(state_file: Path) -> None:
    """The parts that need packages the core does without, each run if it can be (this process imports
    whatever is installed)."""
    state = json.loads(state_file.read_text())
    mode, work = state["mode"], Path(state["work"])
    out: dict[str, Any] = {}
    cuda = mode["device"] == "cuda"

    def spent() -> str | None:
        over = time.time() > state["deadline"]
        return "the check's time budget (--budget-s) was spent before this part" if over else None

    why = missing("datasets")
    data_dir = work / "prepared"
    if why is None:
        from shadowft.config import DataConfig
        from shadowft.data import prepare_dataset

        t0 = time.perf_counter()
        spec = DataConfig(sources=[state["data"]], max_length=mode["max_length"], overlong="truncate", packing=True)
        stats = prepare_dataset(spec, Path(state["model"]["paths"]["instruct"]), data_dir)
        out["prepare"] = {"status": "ok", "samples": stats.samples, "seconds": round(time.perf_counter() - t0, 2)}
        # FSDP / ZeRO-3 first: this process has not touched the GPU yet, so nvidia-smi's peak is the job's
        for part, dist, extra_need in (("fsdp", "fsdp", ()), ("zero3", "deepspeed", ("deepspeed",))):
            reason = None if cuda else "needs CUDA (the train stage refuses FSDP / ZeRO-3 on CPU)"
            reason = reason or missing(*extra_need) or spent()
            out[part] = (
                {"status": "skipped", "reason": reason}
                if reason
                else stage_train(
                    state, part, data_dir, method="full", distributed=dist, launcher="accelerate", num_processes=1
                )
            )
        why_not = spent()
        out["stage_lora_packed"] = (
            {"status": "skipped", "reason": why_not}
            if why_not
            else stage_train(state, "lora", data_dir, method="lora", launcher="inprocess")
        )
    else:
        for part in ("prepare", "fsdp", "zero3", "stage_lora_packed"):
            out[part] = {"status": "skipped", "reason": why}

    grafted = state.get("grafted")
    why = missing("lm_eval", "datasets") or (None if grafted else "no grafted model (the graft failed)") or spent()
    if why is None:
        from shadowft.evaluate.run import evaluate_model

        t0 = time.perf_counter()
        try:
            r = evaluate_model(
                Path(grafted),
                EVAL_SUITES,
                work / "eval",
                limit=mode["eval_limit"],
                batch_size=mode["eval_batch"],
                device=mode["device"],
                backend="hf",
            )
            out["evaluation"] = {
                "status": "ok",
                "model": grafted,
                "suites": {k: {"score": v.score, "n": v.n} for k, v in r.suites.items()},
                "device": r.model.device,
                "limit": mode["eval_limit"],
                "lm_eval_version": r.lm_eval_version,
                "timings": r.timings,
                "wall_s": round(time.perf_counter() - t0, 2),
            }
        except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
            out["evaluation"] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[-4000:]}
    else:
        out["evaluation"] = {"status": "skipped", "reason": why}
    (work / "extra.json").write_text(json.dumps(out, indent=2, default=str))


# -- the check -------------------------------------------------------------------------------------------------

ENV: dict[str, Any] = {}


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def print_table(record: dict[str, Any]) -> None:
    card = record["environment"]["card"]
    print(f"\nGPU check ({record['mode']}) on {card['name']}, {record['model']['params'] / 1e9:.3f}B parameters")
    print(f"{'run':<14}{'tokens/s':>12}{'step s':>9}{'MFU':>8}{'peak GiB':>10}{'plan GiB':>10}{'plan/peak':>10}")
    for r in record["runs"]:
        if r.get("status") != "ok":
            print(f"{r['name']:<14} {r['status']}: {r.get('error', '')[:90]}")
            continue
        peak = r["peak_memory_allocated_bytes"]
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        peak_gib = "-" if not peak else f"{peak / 2**30:.2f}"
        ratio = "-" if not peak else f"{r['plan_total_over_allocated']:.2f}"
        plan_gib = r["plan_estimate"]["total"] / 2**30
        print(
            f"{r['name']:<14}{r['tokens_per_s']:>12.0f}{r['step_s_median']:>9.3f}{mfu:>8}{peak_gib:>10}"
            f"{plan_gib:>10.2f}{ratio:>10}"
        )
    for part in ("graft", "extra"):
        for key, value in record[part].items():
            detail = value.get("reason") or value.get("error") or ""
            print(f"{part}.{key}: {value.get('status')} {detail[:200]}".rstrip())


def run_check(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    mode_name = "dry-run" if args.dry_run else "gpu"
    mode = dict(MODES[mode_name])
    if args.steps:
        mode["steps"] = max(2, args.steps)
    mode["warmup"] = max(1, min(mode["warmup"], mode["steps"] - 1))
    block_forbidden()
    import torch

    if mode["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this is the GPU check (use --dry-run for its CPU dry run)")
    ENV.update(environment(mode["device"]))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="shadowft-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "schema": 1,
        "mode": mode_name,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": ENV,
        "settings": {k: v for k, v in mode.items() if k != "model"},
    }
    try:
        model = build_models(work, mode["model"], mode["precision"])
        record["model"] = model
        source = build_data(work, mode)
        runs: list[dict[str, Any]] = []
        for packing in (False, True):
            rows, tok = tokenize(source, Path(model["paths"]["instruct"]), mode["max_length"], packing)
            lengths = [len(r["input_ids"]) for r in rows]
            record["data"] = {
                "source": "multi-turn conversations from the embedded family's domain + general data",
                "samples": len(rows),
                "tokens": sum(lengths),
                "mean_length": round(statistics.mean(lengths), 1),
                "longest": max(lengths),
                "max_length": mode["max_length"],
            }
            for method in ("lora", "full"):
                try:
                    runs.append(train_run(method, packing, rows, tok, model, mode, work))
                except Exception as exc:  # noqa: BLE001 - recorded, the check goes on
                    runs.append(
                        {
                            "name": f"{method}-{'packed' if packing else 'padded'}",
                            "status": "failed",
                            "method": method,
                            "packing": packing,
                            "error": f"{type(exc).__name__}: {exc}"[-4000:],
                        }
                    )
                print(f"run {runs[-1]['name']}: {runs[-1]['status']}", flush=True)
        record["runs"] = runs
        record["graft"] = graft_results(model, runs, work)
        record["core_imports"] = {
            "blocked": list(FORBIDDEN),
            "forbidden_loaded": [n for n in FORBIDDEN if sys.modules.get(n) is not None],
            "distributions": imported_distributions(),
        }
        record["core_s"] = round(time.perf_counter() - t_start, 2)

        grafted = record["graft"].get("full", {}).get("out") or record["graft"].get("lora", {}).get("out")
        state = {"mode": mode, "work": str(work), "model": model, "data": str(source), "grafted": grafted}
        state["deadline"] = time.time() - (time.perf_counter() - t_start) + args.budget_s
        write_json(args.json, record)  # the core's figures survive a kill during the extras
        (work / "state.json").write_text(json.dumps(state, default=str))
        t0 = time.perf_counter()
        log = work / "extra.log"
        with log.open("w") as fh:
            proc = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--phase",
                    "extra",
                    "--state",
                    str(work / "state.json"),
                ],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if proc.returncode == 0 and (work / "extra.json").is_file():
            record["extra"] = json.loads((work / "extra.json").read_text())
        else:
            tail = log.read_text(errors="replace")[-3000:]
            record["extra"] = {"phase": {"status": "failed", "error": f"exit {proc.returncode}: {tail}"}}
        record["extra_s"] = round(time.perf_counter() - t0, 2)
    finally:
        record["wall_s"] = round(time.perf_counter() - t_start, 2)
        write_json(args.json, record)
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print_table(record)
    print(f"wrote {args.json} ({record['wall_s']:.0f} s)")
    statuses = [r["status"] for r in record["runs"]] + [v.get("status") for v in record["graft"].values()]
    statuses += [v.get("status") for v in record["extra"].values()]
    return 1 if "failed" in statuses else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, float32, 3 steps (the slow test)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: 30, dry run 3)")
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/gpu_check[-dry-run].json")
    ap.add_argument(
        "--workdir", type=Path, default=None, help="where models and outputs go (kept); default: a temp dir"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="extras not started by then are skipped (default 420 s)"
    )
    ap.add_argument("--phase", choices=("all", "extra"), default="all", help=argparse.SUPPRESS)
    ap.add_argument("--state", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "extra":
        extra_phase(args.state)
        return
    if args.json is None:
        args.json = ROOT / "results" / ("gpu_check-dry-run.json" if args.dry_run else "gpu_check.json")
    sys.exit(run_check(args))


if __name__ == "__main__":
    main()
