"""Stage 6: lm-eval suites on one model."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from shadowft.config import EvalConfig, ResourcesConfig
from shadowft.stages import eval_spec
from shadowft.store import Artifact
from tasks._stage import HEAVY_TAG, artifact_key_name, build_stage_in_slot, stage_options


@task(**stage_options(eval_spec, "evaluate", task_run_name="evaluate-{label}", tags=[HEAVY_TAG]))
def evaluate(
    eval_cfg: EvalConfig,
    model: Path | Artifact,
    label: str,
    store_root: str,
    resources: ResourcesConfig | None = None,
    data: Artifact | None = None,
) -> Artifact:
    """Waits for a free slot of `resources` (not part of the cache key). With the run's prepared
    `data`, the held-out split is evaluated as the `own-data` suite (when it has one)."""
    art, _ = build_stage_in_slot(
        eval_spec,
        resources or ResourcesConfig(),
        f"evaluate-{label}",
        eval_cfg=eval_cfg,
        model=model,
        store_root=store_root,
        data=data,
        model_label=label,
    )
    result = json.loads((art.path / "results.json").read_text())
    rows = [
        {"suite": s, "score": r["score"], "n": r["n"], "chance": r["chance"], "metric": r["metric"]}
        for s, r in result["suites"].items()
    ]
    create_table_artifact(
        rows,
        key=artifact_key_name("eval", label),
        description=f"Evaluation of {label} (backend: {result.get('backend', 'hf')}, "
        f"chat template: {result['chat_template']})",
    )
    return art
