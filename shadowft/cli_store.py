"""`shadowft store ...`: inspect and repair the content-addressed artifact store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from shadowft.console import console, err_console

store_app = typer.Typer(help="Inspect and repair the artifact store (SHADOWFT_HOME).", no_args_is_help=True)

_EXPLAIN = {
    "incomplete": "incomplete builds (a crashed or killed write; never used)",
    "stale_work": "work dirs of published artifacts (leftover checkpoints)",
    "resumable": "work dirs of unpublished artifacts (a re-run resumes from them; kept)",
    "pending": "build ids announced but not published (a crashed or running build; harmless, reused by the next build)",
    "foreign": "entries the store did not write (e.g. run folders of an output.root inside the store, symlinks; "
    "never removed)",
}


@store_app.command()
def verify(
    root: Annotated[
        Optional[Path],
        typer.Option(
            help="Store root; default: the one `shadowft run` uses ($SHADOWFT_HOME, ./runs/store or ./.shadowft)."
        ),
    ] = None,
    config: Annotated[Optional[Path], typer.Option(help="Run config YAML: check the store of its output.root.")] = None,
    remove: Annotated[
        bool,
        typer.Option(
            "--remove",
            help="Delete incomplete builds, stale work dirs and stale pending ids (only what the store wrote).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Report incomplete or orphaned artifacts; with --remove, delete them (live builds are left alone).

    Exits 1 when garbage remains (run again with --remove), 0 when the store is clean.
    """
    from shadowft.store import ArtifactStore, find_store

    checked = [root] if root is not None else []
    if root is None:
        output_root = None
        if config is not None:
            from shadowft.config import load_config

            output_root = load_config(config).output.root
        root, checked = find_store(output_root)
    store = ArtifactStore(root)
    if not (store.root / "artifacts").exists() and not (store.root / "work").exists():
        where = " nor ".join(str(c) for c in checked)
        err_console.print(
            f"[yellow]no store at {where}[/] (point elsewhere with --root DIR, --config RUN.yaml or SHADOWFT_HOME)",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    report = store.verify(remove=remove)
    removed = set(report["removed"])
    building = set(report["building"])  # a running build's: kept, not garbage
    garbage = [p for k in ("incomplete", "stale_work") for p in report[k] if p not in removed | building]
    if as_json:
        print(json.dumps({"root": str(store.root), **report, "remaining_garbage": garbage}, indent=2))
    else:
        console.print(f"store {store.root}: {len(report['complete'])} complete artifact(s)")
        for kind, what in _EXPLAIN.items():
            if report[kind]:
                console.print(f"{len(report[kind])} {what}:")
                for p in report[kind]:
                    mark = (
                        "  [green]removed[/]"
                        if p in removed
                        else "  [cyan]kept: a running build holds it[/]"
                        if p in building
                        else ""
                    )
                    console.print(f"  {p}{mark}", soft_wrap=True)
        if garbage:
            console.print(f"[yellow]{len(garbage)} item(s) can be removed:[/] shadowft store verify --remove")
        else:
            console.print("[green]store is consistent[/]")
    if garbage:
        raise typer.Exit(1)
