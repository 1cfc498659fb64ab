"""DPO (TRL's DPOTrainer) on the tiny trio: loss and reward margins logged, the reference model,
the graft of a DPO adapter, and resume after a crash."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from shadowft.config import DataConfig, TrainConfig
from shadowft.preference import prepare_preferences
from shadowft.train import complete_checkpoints, train_model
from tests.train.test_train import RUNNER

FAST = {"objective": "dpo", "max_steps": 4, "batch_size": 4, "grad_accum": 1, "save_steps": 100, "lr": 1e-3}


@pytest.fixture(scope="module")
def pref_dir(llama_trio, tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-data")
    rows = [
        {"prompt": f"what is {a} + {b}?", "chosen": f"[{a + b}]", "rejected": str(a + b)}
        for a in range(8)
        for b in range(4)
    ]
    (root / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_preferences(
        DataConfig(sources=[str(root / "p.jsonl")], max_length=64), llama_trio["instruct"], root / "prep"
    )
    return root / "prep"


def test_dpo_lora_logs_loss_and_margins_and_keeps_no_second_model(llama_trio, pref_dir, tmp_path):
    spec = TrainConfig(method="lora", **FAST)
    res = train_model(llama_trio["base"], pref_dir, spec, tmp_path / "out", tmp_path / "work")
    curve = json.loads((tmp_path / "out" / "loss_curve.json").read_text())
    assert [c["step"] for c in curve] == [1, 2, 3, 4]
    assert all("rewards/margins" in c and "rewards/accuracies" in c and c["loss"] > 0 for c in curve)
    assert curve[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log(2): policy == reference at step 0
    assert curve[-1]["rewards/margins"] > 0  # it learns to prefer the chosen replies
    # The reference model is the adapter-disabled model: no second copy of the weights in memory.
    assert res.objective == "dpo" and res.reference_params == 0
    result = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert result["objective"] == "dpo" and result["reference_params"] == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_dpo_full_uses_a_frozen_reference_copy(llama_trio, pref_dir, tmp_path):
    spec = TrainConfig(method="full", **{**FAST, "max_steps": 2, "lr": 1e-4})
    res = train_model(llama_trio["base"], pref_dir, spec, tmp_path / "out", tmp_path / "work")
    assert res.reference_params == res.total_params  # a frozen copy of the starting model
    tuned, start = (
        load_file(tmp_path / "out" / "model.safetensors"),
        load_file(llama_trio["base"] / "model.safetensors"),
    )
    assert any(not torch.equal(tuned[k], start[k].to(tuned[k].dtype)) for k in start)


def test_graft_of_a_dpo_adapter_equals_peft_merge(llama_trio, pref_dir, tmp_path):
    from shadowft.graft import graft
    from tests.helpers import load_dir, peft_merged_state

    spec = TrainConfig(method="lora", **FAST)
    train_model(llama_trio["base"], pref_dir, spec, tmp_path / "adapter", tmp_path / "work")
    graft(llama_trio["instruct"], tmp_path / "grafted", adapter=tmp_path / "adapter", scope="all")
    merged = peft_merged_state(llama_trio["instruct"], tmp_path / "adapter")
    got = load_dir(tmp_path / "grafted")
    assert got.keys() <= merged.keys()
    for name, w in got.items():
        torch.testing.assert_close(w, merged[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dpo_resumes_after_a_crash(llama_trio, pref_dir, tmp_path):
    spec = TrainConfig(method="lora", **{**FAST, "max_steps": 6, "save_steps": 2})
    work, out = tmp_path / "work", tmp_path / "out"
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    args = [str(llama_trio["base"]), str(pref_dir), str(out), str(work), spec.model_dump_json()]
    proc = subprocess.run(
        [sys.executable, str(script), *args, "5"], check=False, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in complete_checkpoints(work / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    events: list[dict] = []
    res = train_model(llama_trio["base"], pref_dir, spec, out, work, progress=events.append)
    assert res.resumed_from == "checkpoint-4" and res.global_step == 6
    assert [e["step"] for e in events if e["event"] == "step"] == [5, 6]
    ref = train_model(llama_trio["base"], pref_dir, spec, tmp_path / "ref", tmp_path / "ref-work")
    assert [c["loss"] for c in ref.loss_curve] == [c["loss"] for c in res.loss_curve]
