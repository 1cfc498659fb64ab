"""After the report: the run folder a person opens (runs/<name>/<time>/), and the promotion gate."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from shadowft.config import RunConfig
from shadowft.runs import check_promotion, promote, publish_run, refuse
from shadowft.store import Artifact


@task(name="run-folder")
def run_folder(
    config: RunConfig,
    stages: dict[str, Artifact],
    evals: dict[str, Artifact],
    report: Artifact,
    models: dict[str, str],
    started: float,
) -> Path:
    """Not cached: every run, cached stages or not, gets its own folder (and `latest` points at it)."""
    folder = publish_run(
        config.output.root,
        config.output.name,
        config.output.name or "Shadow-FT results",
        config.model_dump(mode="json"),
        {label: a.path for label, a in stages.items()},
        {m: a.path for m, a in evals.items()},
        report.path,
        models,
        started,
    )
    create_markdown_artifact(
        f"Run folder: `{folder}`\n\n" + (folder / "report.md").read_text(),
        key="shadow-ft-run-folder",
        description="The run's report, chart, loss curves and config",
    )
    return folder


@task(name="promotion-gate")
def promotion_gate(folder: Path, max_regression: float) -> bool:
    """Promote, or fail the flow run with the table of drops (a Prefect automation on the flow run's
    Failed state, e.g. with the tag `nightly`, then notifies someone)."""
    decision = check_promotion(folder, max_regression)
    create_markdown_artifact(decision.markdown(), key="shadow-ft-promotion", description="Promotion gate")
    if not decision.ok:
        raise refuse(decision)
    promote(decision, run_id=str(flow_run.get_id() or ""))
    return True
