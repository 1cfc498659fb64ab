"""benchmarks/gpu_check.py: its CPU dry run writes every figure, and its core path needs none of the
packages a GPU machine lacks (prefect, trl, lm-eval, datasets, deepspeed)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The script and the shadowft modules its core path uses, imported in a fresh process where the packages
# the GPU machines lack cannot be imported (as the script blocks them for its own core phase).
IMPORT_CLOSURE = r"""
import importlib, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("gpu_check", sys.argv[1])
g = importlib.util.module_from_spec(spec)
spec.loader.exec_module(g)
g.block_forbidden()
for name in g.CORE_MODULES:
    importlib.import_module(name)
print(json.dumps({"forbidden": list(g.FORBIDDEN), "loaded": [n for n in g.FORBIDDEN if sys.modules.get(n) is not None],
                  "distributions": g.imported_distributions()}))
"""


def test_core_path_imports_without_prefect_or_trl():
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CLOSURE, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"prefect", "trl", "lm_eval", "datasets", "deepspeed"} <= set(got["forbidden"])
    assert got["loaded"] == []
    assert not {"prefect", "trl", "lm_eval", "datasets", "deepspeed"} & set(got["distributions"])


def test_bf16_peaks_by_card_name():
    g = load_script()
    assert g.bf16_peak("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert g.bf16_peak("NVIDIA H200")[0] == 989.0
    assert g.bf16_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert g.bf16_peak("Tesla T4") == (None, "unknown")


@pytest.mark.slow
def test_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "dry-run" and r["schema"] == 1 and r["wall_s"] > 0
    e = r["environment"]
    for name in ("torch", "transformers", "peft", "accelerate", "safetensors", "lm_eval", "datasets", "deepspeed"):
        assert name in e["versions"]
    assert e["versions"]["torch"] and "driver" in e and "torch_cuda" in e
    assert e["card"]["name"] == "cpu" and "bf16_peak_tflops" in e["card"]
    assert r["model"]["config"]["model_type"] == "qwen3" and 1e6 < r["model"]["params"] < 1e7
    assert r["data"]["samples"] > 0 and r["data"]["longest"] <= r["data"]["max_length"]

    runs = {x["name"]: x for x in r["runs"]}
    assert set(runs) == {"lora-padded", "full-padded", "lora-packed", "full-packed"}
    for x in runs.values():
        assert x["status"] == "ok", x
        assert x["tokens_per_s"] > 0 and x["timed_steps"] >= 1 and x["flops_per_token"] > 0
        assert "mfu" in x and "peak_memory_allocated_bytes" in x  # None on a CPU
        assert x["plan_estimate"]["total"] > 0 and math.isfinite(x["final_loss"])
    assert runs["lora-padded"]["trainable_params"] < runs["full-padded"]["trainable_params"]
    assert runs["lora-packed"]["padding_overhead"] == 0 < runs["lora-padded"]["padding_overhead"]

    assert r["graft"]["lora"]["status"] == "ok" and r["graft"]["full"]["status"] == "ok"
    extra = r["extra"]
    for part in ("fsdp", "zero3"):
        assert extra[part]["status"] == "skipped" and "CUDA" in extra[part]["reason"]
    assert extra["stage_lora_packed"]["status"] == "ok" and extra["stage_lora_packed"]["packing"] is True
    ev = extra["evaluation"]
    assert ev["status"] == "ok" and ev["device"] == "cpu"
    assert {k: v["n"] for k, v in ev["suites"].items()} == {"toy-math": ev["limit"], "toy-domain": ev["limit"]}

    closure = r["core_imports"]
    assert closure["forbidden_loaded"] == []
    assert not set(closure["blocked"]) & set(closure["distributions"])
    assert {"torch", "transformers", "peft", "pydantic"} <= set(closure["distributions"])
