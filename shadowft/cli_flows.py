"""CLI commands that orchestrate: `run`, `demo`, `compare` (Prefect flows) and `serve` (the UI).

`shadowft/` never imports Prefect at import time: each command validates its config first (so a typo
fails before Prefect starts), then imports `flows` inside the function.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from shadowft import console as ui
from shadowft import interrupt, lifeline
from shadowft.console import console, quiet_prefect
from shadowft.errors import ShadowFTError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set train.lr=1e-4 (repeatable).")
]


def _quiet_prefect_defaults() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


class _UserErrorShownOnce(logging.Filter):
    """A logging filter for the terminal: Prefect logs a failed task or flow four times (the exception
    with its traceback, then each state with the message, newlines escaped). For a ShadowFTError (the
    user's input is wrong; the message says how to fix it) the CLI prints it once, with its hint, so
    these lines are dropped here; with `--verbose` they are kept, without the traceback. The Prefect
    API (the UI's run logs) still gets every line: this filter sits on the console handler only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if interrupt.interrupted() and not ui.VERBOSE:
            return False  # after Ctrl-C: its one line says it all (Prefect's crash report goes to the API)
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ShadowFTError):
            if not ui.VERBOSE:
                return False
            record.exc_info, record.exc_text = None, None
        elif not ui.VERBOSE and any(f"{name}:" in record.getMessage() for name in _user_error_names()):
            return False  # "Finished in state Failed('... PairError: ...')"
        return True


def _user_error_names(cls: type[Exception] = ShadowFTError) -> set[str]:
    """Class names of ShadowFTError and all its subclasses (PairError, EvalError, PromotionRefused, ...)."""
    names = {cls.__name__}
    for sub in cls.__subclasses__():
        names |= _user_error_names(sub)
    return names


def _quiet_user_error_tracebacks() -> None:
    """Install `_UserErrorShownOnce` on the terminal handlers (Prefect's console handler sits on the
    root logger; the run loggers propagate to it), and quiet Prefect's own chatter."""
    quiet_prefect()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not any(
            isinstance(f, _UserErrorShownOnce) for f in handler.filters
        ):
            handler.addFilter(_UserErrorShownOnce())


@contextmanager
def _flow_command() -> Iterator[None]:
    """What `run`, `demo` and `compare` share once their config is valid: nothing they start outlives
    them (lifeline), Ctrl-C stops them in seconds with one line (`shadowft.interrupt`), and the flow
    talks to the user's Prefect API or to a temporary server of our own, out of Ctrl-C's reach."""
    lifeline.start()  # the temporary server (and any launcher) dies with this command, even on SIGKILL
    _quiet_prefect_defaults()
    interrupt.install(current_run=_current_flow_run, cancel_run=_cancel_flow_run)
    try:
        _flow_api()
        yield
    except KeyboardInterrupt:
        interrupt.exit_interrupted()


@contextmanager
def _suites_checked(overrides: list[str]) -> Iterator[None]:
    """`--set eval.suites=gsm8kk` (no brackets) fails as "must be a list"; before the user retries, the
    name itself is checked too, so that both problems show at once."""
    try:
        yield
    except ShadowFTError as exc:
        names = [
            v.strip()
            for o in overrides
            for k, _, v in [o.partition("=")]
            if k.strip().endswith("eval.suites") and v.strip() and not v.strip().startswith("[")
        ]
        if names and "must be a list" in exc.message:
            from shadowft.evaluate import resolve_suites

            try:
                resolve_suites(names)
            except ShadowFTError as bad:
                exc.hint = f"{bad.message}: {bad.hint}"
        raise


def _current_flow_run() -> Any:
    """The id of the flow run this thread executes, or None (cheap: read in the SIGINT handler)."""
    if "prefect.context" not in sys.modules:
        return None
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None


def _cancel_flow_run(flow_run_id: Any) -> None:
    """Record an interrupted flow run, and its task runs still running, as Cancelled on the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    why = "Cancelled with Ctrl-C in the terminal"
    with get_client(sync_client=True, httpx_settings={"timeout": 3.0}) as client:
        running = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
            ),
        )
        for task_run in running:
            client.set_task_run_state(task_run.id, Cancelled(message=why), force=True)
        client.set_flow_run_state(flow_run_id, Cancelled(message=why), force=True)


def _flow_api() -> None:
    """Point Prefect at the configured API (PREFECT_API_URL, a profile) or, when there is none, at a
    temporary server started here in its own session (Prefect's own would die with Ctrl-C)."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        return
    server = interrupt.TemporaryServer.start(
        env=settings.to_environment_variables(exclude_unset=True),
        timeout=max(120.0, float(settings.server.ephemeral.startup_timeout_seconds)),
        verbose=ui.VERBOSE,
    )
    os.environ["PREFECT_API_URL"] = server.api_url  # also for what this command starts
    refresh_global_settings_context()  # Prefect read its settings at import: read them again
    if ui.VERBOSE:
        console.print(f"Prefect API: temporary server at {server.api_url}", highlight=False, style="dim")


def _scores_table(title: str, columns: list[str], rows: list[dict[str, str]]) -> Table:
    """A rich table of formatted score rows (`shadowft.report.table_rows` / `shadowft.compare.table_rows`),
    shown transposed on a terminal too narrow for it (`shadowft.tables.score_table`)."""
    from shadowft.tables import score_table

    return score_table(title, columns, rows)


def _print_summary(result: dict[str, Any]) -> None:
    from shadowft.report import chance_row, table_rows
    from shadowft.tables import pct

    summary = json.loads((Path(result.get("folder") or result["report"]) / "summary.json").read_text())
    columns = ["model", *summary["suites"], "mean"]
    rows = [*table_rows(summary), {"model": "[dim]chance[/]", **chance_row(summary, style="dim")}]
    console.print(_scores_table("Scores in % (change vs Instruct)", columns, rows))
    if summary.get("own_data"):  # the held-out split of the user's data: the softer score beside it
        chrf = ", ".join(f"{m} {pct(v.get('chrf'))}" for m, v in summary["own_data"].items())
        console.print(
            f"own-data (your held-out data, exact match above, not in the mean): chrF {chrf}; replies: samples.md"
        )
    if summary.get("carried"):  # the tuned-base baseline: the share of the tuned Base's gain the graft carried
        from shadowft.compare import carried_text

        console.print(f"carried (shadow-ft / tuned-base): {carried_text(summary['carried'])}; why —: report.md")
    if "folder" in result:
        console.print(f"report, charts, summary and config: {result['folder']}", soft_wrap=True, highlight=False)
    else:
        console.print(f"report, chart and summary: {result['report']}", soft_wrap=True, highlight=False)
    for name, path in result["models"].items():
        console.print(f"  {name}: {path}", soft_wrap=True, highlight=False)


def run(
    config: Annotated[Path, typer.Argument(help="Run config YAML (see examples/).")],
    set_: SetOption = None,
) -> None:
    """Run the Shadow-FT flow on CONFIG (ephemeral Prefect API, or the server at PREFECT_API_URL)."""
    from shadowft.config import load_config
    from shadowft.stages import preflight

    with _suites_checked(set_ or []):
        cfg = load_config(config, set_ or [])  # config errors stop here, before Prefect starts
    preflight(cfg)  # missing inputs, unknown suites, code suites without opt-in: also before Prefect starts
    with _flow_command():
        from flows.shadow_ft import for_cluster

        _quiet_user_error_tracebacks()
        # A ShadowFTError raised in a task fails the task and the flow, and Prefect re-raises it here:
        # `main` prints its message and hint and exits 2. On a Ray cluster, heavy stages are Ray tasks.
        _print_summary(for_cluster(cfg)(config=cfg))


def demo(
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key of examples/toy.yaml.")] = None,
) -> None:
    """Build the embedded model family if needed and run examples/toy.yaml end to end."""
    run(EXAMPLES / "toy.yaml", set_)


def compare(
    config: Annotated[Path, typer.Argument(help="Comparison config YAML (see examples/compare-toy.yaml).")],
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override a key, e.g. --set seeds=[0] --set run.eval.limit=20."),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Also copy table.md, chart.png and summary.json to this folder.")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Shadow-FT vs conventional tuning (LoRA and full) over seeds, on CONFIG's pair and data."""
    from shadowft.compare import carried_text, load_compare_config, notes, table_rows
    from shadowft.stages import preflight

    with _suites_checked(set_ or []):
        cfg = load_compare_config(config, set_ or [])
    cfg.check()  # alphas auto without a validation split: before Prefect starts
    if cfg.run.resources.cluster != "local":
        raise ShadowFTError(
            f"run.resources.cluster={cfg.run.resources.cluster}: comparisons run on this machine only so far",
            hint="set run.resources.cluster=local (Ray clusters run `shadowft run`, docs/CLUSTERS.md)",
        )
    preflight(cfg.run)
    with _flow_command():
        if threads:
            import torch

            torch.set_num_threads(threads)
        from flows.compare import compare as compare_flow

        _quiet_user_error_tracebacks()  # after Prefect's logging setup (at its import), as `run` does
        result = compare_flow(config=cfg)
        folder = Path(result["comparison"])
        summary = json.loads((folder / "summary.json").read_text())
        columns = ["model", "seeds", *summary["suites"], "mean"]
        title = f"{summary['title']}: mean ± std over seeds in % (change vs Instruct)"
        console.print(_scores_table(title, columns, table_rows(summary)))
        for note in notes(summary):
            console.print(f"[dim]{note}[/]", highlight=False)
        for name, per in summary.get("carried", {}).items():  # the share of the tuned Base's gain carried
            share = carried_text({s: c for s, c in per.items() if s != "vs"})
            console.print(f"carried ({name} / {per['vs']}): {share}; why —: table.md", highlight=False)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for name in ("table.md", "chart.png", "summary.json"):
                shutil.copyfile(folder / name, out / name)
            console.print(f"copied to {out}")
        console.print(f"table, chart and summary: {folder}")


def serve(
    host: Annotated[
        str, typer.Option(help="Address the server binds to (0.0.0.0 exposes it to the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the server and its UI.")] = 4200,
    prefect_home: Annotated[
        Optional[Path],
        typer.Option(help="PREFECT_HOME for the server, worker and flow runs (database, results); default: yours."),
    ] = None,
    nightly_data: Annotated[
        Optional[Path],
        typer.Option(
            help="Dataset file the nightly deployment reads every night "
            "(default: $SHADOWFT_NIGHTLY_DATA or ./data/nightly.jsonl)."
        ),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option(
            help="Run config YAML whose values become both deployments' defaults "
            "(default: examples/toy.yaml, as in deployments/prefect.yaml)."
        ),
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a key of --config, e.g. --set train.max_steps=10.")
    ] = None,
    worker: Annotated[bool, typer.Option(help="Start a worker for the process pool.")] = True,
    log_dir: Annotated[
        Optional[Path],
        typer.Option(help="Write the server's and worker's output to files here instead of the terminal."),
    ] = None,
    startup_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to answer.")] = 120.0,
) -> None:
    """Serve the Prefect UI with the Shadow-FT deployments and a worker (Ctrl-C stops all of it)."""
    from shadowft.serve import serve as serve_stack

    serve_stack(host, port, prefect_home, nightly_data, config, set_, worker, log_dir, startup_timeout)
