"""Tasks of the comparison flow: the weight distance (sigma) of two models, and the comparison report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from shadowft.compare import comparison_spec, table_rows, to_markdown
from shadowft.stages import distance_spec
from shadowft.store import Artifact
from tasks._stage import artifact_key_name, build_stage, inline_chart, stage_options


@task(**stage_options(distance_spec, "distance", task_run_name="sigma-{label}"))
def distance(a: Path | Artifact, b: Path | Artifact, label: str, store_root: str) -> Artifact:
    """sigma(a, b) over the layer tensors, stored (`sigma.json`); `label` names it in the UI."""
    art, _ = build_stage(distance_spec, a=a, b=b, store_root=store_root)
    return art


@task(name="comparison", persist_result=True, result_serializer="json")
def comparison(
    evals: dict[str, dict[str, Artifact]],
    distances: dict[str, dict[str, dict[str, Artifact]]],
    info: dict[str, dict[str, Any]],
    title: str,
    store_root: str,
) -> Artifact:
    """Not cached by Prefect (like `report`): reuses the stored comparison and re-publishes the table
    and the markdown report, so every run shows them."""
    art, _ = build_stage(
        comparison_spec, evals=evals, distances=distances, info=info, title=title, store_root=store_root
    )
    summary = json.loads((art.path / "summary.json").read_text())
    key = artifact_key_name("compare", title)[:60].strip("-")
    create_table_artifact(
        table_rows(summary), key=f"{key}-table", description=f"{title}: mean ± std over seeds in % (change vs Instruct)"
    )
    md = to_markdown(summary) + "\n"
    chart = art.path / "chart.png"
    md += inline_chart(chart)
    md += f"Files: `{art.path / 'table.md'}`, `{chart}`, `{art.path / 'summary.json'}`\n"
    create_markdown_artifact(md, key=f"{key}-report", description=title)
    return art
