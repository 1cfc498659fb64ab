"""End to end on the embedded family (the demo's models), LoRA and full, through real Prefect runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowft.config import load_config
from tests.helpers import score_from_samples
from tests.test_pipeline import run_flow

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "toy.yaml"


@pytest.mark.parametrize("method,lr", [("lora", "2e-3"), ("full", "3e-4")])
def test_demo_config_end_to_end(prefect_env, zoo_family, method, lr):
    fam = zoo_family
    cfg = load_config(
        EXAMPLE,
        [
            f"pair.base={fam.base}",
            f"pair.instruct={fam.instruct}",
            f"data.sources=[{fam.data / 'domain.jsonl'}]",
            "data.max_samples=160",  # CI-sized: the mechanics, not the science
            "train.max_steps=20",
            f"train.method={method}",
            f"train.lr={lr}",
            "eval.limit=20",
        ],
    )
    flow_state, states, result = run_flow(cfg)
    assert flow_state == "Completed", states
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    # the demo's rows: Base and the tuned Base too, for the share of the shadow's gain the graft carried
    assert list(summary["scores"]) == ["instruct", "base", "tuned-base", "direct", "shadow-ft"]
    assert summary["suites"] == ["toy-math", "toy-coding", "toy-reasoning"]
    assert set(summary["carried"]) == set(summary["suites"])
    assert summary["chance"]["toy-reasoning"] == 0.5
    inst = summary["scores"]["instruct"]
    assert inst["toy-coding"] > 0.2 and inst["toy-math"] > 0.05  # the family's skills are there
    # every model's score per suite is the mean of eval.limit per-sample records of its own evaluation
    assert summary["n"] == {s: 20 for s in summary["suites"]}
    index = json.loads((Path(result["folder"]) / "artifacts.json").read_text())["artifacts"]
    for model in summary["scores"]:
        for suite in summary["suites"]:
            score, counts = score_from_samples(Path(index[f"eval-{model}"]["path"]), suite)
            assert summary["scores"][model][suite] == pytest.approx(score, abs=1e-6) and set(counts) == {20}
    if method == "full":
        assert states["extract_delta"] == "Completed"
