"""Stage 7: the results table, markdown report and chart for all models of the run."""

from __future__ import annotations

import json
import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from shadowft.report import compare_markdown, history_path, record_run, table_rows, to_markdown
from shadowft.stages import report_spec
from shadowft.store import Artifact
from tasks._stage import build_stage, inline_chart


@task(name="report", persist_result=True, result_serializer="json")
def report(evals: dict[str, Artifact], title: str, store_root: str, selection: Artifact | None = None) -> Artifact:
    """Not cached by Prefect: it reuses the stored report (built once) and re-publishes the UI
    artifacts, so every run, cached or not, shows its results table. Every run's summary is also
    recorded under the run name (`title`), and the report compares with the previous run of it."""
    art, _ = build_stage(report_spec, evals=evals, title=title, selection=selection, store_root=store_root)
    summary = json.loads((art.path / "summary.json").read_text())
    create_table_artifact(
        table_rows(summary), key="shadow-ft-results", description=f"{title}: scores in % (change vs Instruct)"
    )

    history = history_path(store_root, title)
    run_id = str(flow_run.get_id() or art.build_id)
    previous = record_run(history, summary, run_id, run_name=flow_run.get_name(), report_key=art.key)
    chart = art.path / "chart.png"
    md = to_markdown(summary, title) + "\n" + compare_markdown(summary, previous, art.key) + "\n"
    md += inline_chart(chart)
    # no code span inside the link text: the Prefect UI showed its backticks literally (issue 26)
    text = re.sub(r"([\\`*_\[\]<>])", r"\\\1", str(chart))
    md += f"Chart: [{text}]({chart.as_uri()})\n\nSummary JSON: `{art.path / 'summary.json'}`\n\nRun history: `{history}`\n"
    create_markdown_artifact(md, key="shadow-ft-report", description=title)
    return art
