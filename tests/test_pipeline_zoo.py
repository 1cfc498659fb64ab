"""End to end on the embedded family (the demo's models), LoRA and full, through real Prefect runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowft.config import load_config
from tests.test_pipeline import prefect_env, run_flow  # noqa: F401  (module fixture reused)

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "toy.yaml"


@pytest.mark.parametrize("method,lr", [("lora", "2e-3"), ("full", "3e-4")])
def test_demo_config_end_to_end(prefect_env, zoo_family, method, lr):  # noqa: F811
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
    assert list(summary["scores"]) == ["instruct", "direct", "shadow-ft"]
    assert summary["suites"] == ["toy-math", "toy-coding", "toy-reasoning", "toy-domain"]
    assert summary["chance"]["toy-reasoning"] == 0.5
    inst = summary["scores"]["instruct"]
    assert inst["toy-coding"] > 0.2 and inst["toy-math"] > 0.05  # the family's skills are there
    for model in ("direct", "shadow-ft"):
        assert all(0.0 <= v <= 1.0 for v in summary["scores"][model].values() if v is not None)
    if method == "full":
        assert states["extract_delta"] == "Completed"
