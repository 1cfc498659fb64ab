"""Shadow-DPO end to end on the embedded family (examples/toy-dpo.yaml), through `shadowft run`:
preference prep, DPO on Base and on Instruct, graft, evaluation, report; a SIGKILL during DPO
training resumes from its checkpoint; the same run again is all cached."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from shadowft.store import ArtifactStore
from tests.helpers import score_from_samples
from tests.test_reliability import REPO, SHADOWFT, _env, _kill, _popen, _wait_for, states_of_last_flow_run

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "toy-dpo.yaml"
# CI-sized: the mechanics on the real family; the science is in the README's comparison.
OVERRIDES = ["data.max_samples=160", "train.max_steps=20", "train.save_steps=4", "eval.limit=20"]


def test_toy_dpo_example_killed_in_training_resumes_then_is_all_cached(prefect_api, tmp_path):
    from shadowft.train import complete_checkpoints

    overrides = [*OVERRIDES, f"output.root={tmp_path / 'runs'}"]  # the run folder, not in the checkout
    cmd = [*SHADOWFT, "run", str(EXAMPLE), *[a for o in overrides for a in ("--set", o)]]
    env = _env(tmp_path, prefect_api)
    store = ArtifactStore(tmp_path / "store")
    ckpts = lambda: [c for d in (store.root / "work" / "train").glob("*/checkpoints") for c in complete_checkpoints(d)]  # noqa: E731

    proc = _popen(cmd, env)
    _wait_for(ckpts, proc, 300, "a DPO training checkpoint")
    _kill(proc)
    last = max(int(c.name.split("-")[1]) for c in ckpts())

    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = [b for b in store.builds() if b["stage"] == "data"]
    assert len(data) == 1 and store.manifest("data", data[0]["key"])["config"]["objective"] == "dpo"
    trained = {b["key"]: store.manifest("train", b["key"])["train"] for b in store.builds() if b["stage"] == "train"}
    assert len(trained) == 2  # Base (Shadow-DPO) and Instruct (the direct DPO baseline)
    assert all(t["objective"] == "dpo" and t["global_step"] == 20 for t in trained.values())
    assert any(t["resumed_step"] == last and t["resumed_from"] == f"checkpoint-{last}" for t in trained.values())
    for key in trained:
        curve = json.loads((store.root / "artifacts" / "train" / key / "loss_curve.json").read_text())
        assert all("rewards/margins" in c for c in curve)

    reports = [b for b in store.builds() if b["stage"] == "report"]
    summary = json.loads((store.root / "artifacts" / "report" / reports[-1]["key"] / "summary.json").read_text())
    assert list(summary["scores"]) == ["instruct", "direct", "shadow-ft"]
    assert "toy-format" in summary["suites"] and summary["chance"]["toy-format"] == 0.0
    assert summary["scores"]["instruct"]["toy-format"] == 0.0  # the behaviour is new to Instruct
    # ... and that 0.0 is Instruct's answers to all eval.limit items, scored one by one, not a default
    index = json.loads((tmp_path / "runs" / "toy-dpo" / "latest" / "artifacts.json").read_text())["artifacts"]
    for model in summary["scores"]:
        score, counts = score_from_samples(Path(index[f"eval-{model}"]["path"]), "toy-format")
        assert summary["scores"][model]["toy-format"] == pytest.approx(score, abs=1e-6) and counts == [20]

    before = {(b["stage"], b["key"]) for b in store.builds()}
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    states = states_of_last_flow_run()
    assert {
        n: s
        for n, s in states.items()
        if s != "Cached" and not n.startswith(("report", "embedded_family", "run-folder"))
    } == {}, states
    new = [(b["stage"], b["key"]) for b in store.builds() if (b["stage"], b["key"]) not in before]
    assert {stage for stage, _ in new} <= {"report"}, new
