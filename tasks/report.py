"""Stage 7: the results table, markdown report and chart for all models of the run."""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from shadowft.report import table_rows, to_markdown
from shadowft.stages import report_spec
from shadowft.store import Artifact
from tasks._stage import build_stage


@task(name="report", persist_result=True, result_serializer="json")
def report(evals: dict[str, Artifact], title: str, store_root: str) -> Artifact:
    """Not cached by Prefect: it reuses the stored report (built once) and re-publishes the UI
    artifacts, so every run, cached or not, shows its results table."""
    art, _ = build_stage(report_spec, evals=evals, title=title, store_root=store_root)
    summary = json.loads((art.path / "summary.json").read_text())
    create_table_artifact(table_rows(summary), key="shadow-ft-results", description=f"{title}: scores in % (change vs Instruct)")
    md = to_markdown(summary, title) + f"\nChart: `{art.path / 'chart.png'}`\n\nSummary JSON: `{art.path / 'summary.json'}`\n"
    create_markdown_artifact(md, key="shadow-ft-report", description=title)
    return art
