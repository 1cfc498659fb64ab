"""The pipeline with a launched 2-process (DDP) training on the embedded family, through real Prefect runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowft.config import load_config
from tests.helpers import free_port
from tests.test_pipeline import run_flow

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "toy.yaml"


def test_two_process_training_in_the_pipeline_then_all_cached(prefect_env, zoo_family):
    fam = zoo_family
    cfg = load_config(
        EXAMPLE,
        [
            f"pair.base={fam.base}",
            f"pair.instruct={fam.instruct}",
            f"data.sources=[{fam.data / 'domain.jsonl'}]",
            "data.max_samples=64",
            "train.max_steps=6",
            "train.lr=2e-3",
            "train.num_processes=2",
            "train.distributed=ddp",
            f"train.main_port={free_port()}",  # not in the stage key: the re-run below is still cached
            "eval.limit=10",
            "baselines=[instruct,direct]",  # the launch is under test, not the tuned-base rows
        ],
    )
    flow_state, states, result = run_flow(cfg)
    assert flow_state == "Completed", states
    for role in ("base", "instruct"):
        assert states[f"train-{role}"] == "Completed", states
    store = Path(result["models"]["shadow-ft"]).parents[2]
    tuned = [json.loads(p.read_text()) for p in store.glob("**/model/train_result.json")]
    assert tuned and all(t["world_size"] == 2 and t["distributed"] == "ddp" for t in tuned), tuned
    assert all(t["global_batch"] == t["spec"]["batch_size"] * t["spec"]["grad_accum"] * 2 for t in tuned)
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    assert list(summary["scores"]) == ["instruct", "direct", "shadow-ft"]  # graft and evaluation followed
    assert states["graft-shadow-ft"] == "Completed", states

    again_state, again, _ = run_flow(cfg)
    assert again_state == "Completed"
    # every stage from cache (the report is rendered again, as in tests/test_pipeline.py)
    assert all(s == "Cached" for name, s in again.items() if name not in ("report", "run-folder")), again
    assert again["train-base"] == again["train-instruct"] == "Cached"
