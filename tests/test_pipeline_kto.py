"""Shadow-KTO end to end on the embedded family (examples/toy-kto.yaml), through `shadowft run`: the
KTO set's preparation, KTO on Base and on Instruct (the direct baseline), graft, evaluation, report."""

from __future__ import annotations

import json
import subprocess

import pytest

from shadowft.store import ArtifactStore
from tests.test_reliability import REPO, SHADOWFT, _env

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "toy-kto.yaml"
# CI-sized, as the DPO pipeline test: the mechanics on the real family; the numbers are in the README.
OVERRIDES = ["data.max_samples=160", "train.max_steps=20", "eval.limit=20"]


def test_toy_kto_example_trains_base_and_instruct_with_kto_and_reports(prefect_api, tmp_path):
    overrides = [*OVERRIDES, f"output.root={tmp_path / 'runs'}"]  # the run folder, not in the checkout
    cmd = [*SHADOWFT, "run", str(EXAMPLE), *[a for o in overrides for a in ("--set", o)]]
    r = subprocess.run(cmd, env=_env(tmp_path, prefect_api), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    store = ArtifactStore(tmp_path / "store")
    data = [b for b in store.builds() if b["stage"] == "data"]
    assert len(data) == 1
    manifest = store.manifest("data", data[0]["key"])
    assert manifest["config"]["objective"] == "kto" and manifest["samples"] == 160
    stats = json.loads((store.root / "artifacts" / "data" / data[0]["key"] / "data" / "stats.json").read_text())
    assert (stats["kind"], stats["desirable"], stats["undesirable"]) == ("kto", 80, 80)

    trained = {b["key"]: store.manifest("train", b["key"])["train"] for b in store.builds() if b["stage"] == "train"}
    assert len(trained) == 2  # Base (Shadow-KTO) and Instruct (the direct KTO baseline)
    assert all(t["objective"] == "kto" and t["global_step"] == 20 for t in trained.values())
    for key in trained:
        curve = json.loads((store.root / "artifacts" / "train" / key / "loss_curve.json").read_text())
        assert len(curve) == 20 and all({"kl", "rewards/chosen", "rewards/rejected"} <= c.keys() for c in curve)

    reports = [b for b in store.builds() if b["stage"] == "report"]
    summary = json.loads((store.root / "artifacts" / "report" / reports[-1]["key"] / "summary.json").read_text())
    assert list(summary["scores"]) == ["instruct", "direct", "shadow-ft"]
    assert summary["scores"]["instruct"]["toy-format"] == 0.0  # the behaviour is new to Instruct
