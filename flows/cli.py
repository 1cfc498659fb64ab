"""The `shadowft` console script: the library's commands plus those that run flows.

`shadowft/` stays free of Prefect; the commands that orchestrate (run, demo) live here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from shadowft.cli import app, console, main as _library_main
from flows import serve  # noqa: F401,E402  (registers `shadowft serve`)
from flows import compare_cli  # noqa: F401,E402  (registers `shadowft compare`)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _quiet_prefect_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


def _print_summary(result: dict) -> None:
    import json

    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    from shadowft.report import table_rows

    cols = [*summary["suites"], "mean"]
    table = Table(title="Scores in % (change vs Instruct)")
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for row in table_rows(summary):
        table.add_row(row["model"], *(row[c] for c in cols))
    chance = summary["chance"]
    table.add_row("[dim]chance[/]", *(f"[dim]{100 * chance[s]:.0f}[/]" if chance.get(s) is not None else "" for s in summary["suites"]), "")
    console.print(table)
    console.print(f"report, chart and summary: {result['report']}")
    for name, path in result["models"].items():
        console.print(f"  {name}: {path}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Run config YAML (see examples/).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set train.lr=1e-4 (repeatable).")] = None,
) -> None:
    """Run the Shadow-FT flow on CONFIG (ephemeral Prefect API, or the server at PREFECT_API_URL)."""
    from shadowft.config import load_config

    from shadowft.stages import preflight

    cfg = load_config(config, set_ or [])  # config errors stop here, before Prefect starts
    preflight(cfg)  # unknown suites, code suites without opt-in: also before Prefect starts
    _quiet_prefect_defaults()
    from flows.shadow_ft import shadow_ft

    _quiet_user_error_tracebacks()
    # A ShadowFTError raised in a task fails the task and the flow, and Prefect re-raises it here:
    # `main` prints its message and hint and exits 2.
    _print_summary(shadow_ft(config=cfg))


class _UserErrorWithoutTraceback:
    """A logging filter: Prefect logs a failed task or flow with its traceback; for a ShadowFTError
    (the user's input is wrong, the message says how to fix it) the message alone is shown."""

    def filter(self, record) -> bool:
        from shadowft.errors import ShadowFTError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ShadowFTError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_error_tracebacks() -> None:
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UserErrorWithoutTraceback) for f in logger.filters):
            logger.addFilter(_UserErrorWithoutTraceback())


@app.command()
def demo(
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key of examples/toy.yaml.")] = None,
) -> None:
    """Build the embedded model family if needed and run examples/toy.yaml end to end."""
    run(EXAMPLES / "toy.yaml", set_)


def main() -> None:
    _library_main()
