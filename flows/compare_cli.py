"""`shadowft compare CONFIG.yaml`: run the comparison flow and print its table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from shadowft.cli import app, console


@app.command()
def compare(
    config: Annotated[Path, typer.Argument(help="Comparison config YAML (see examples/compare-toy.yaml).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set seeds=[0] --set run.eval.limit=20.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also copy table.md, chart.png and summary.json to this folder.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Shadow-FT vs conventional tuning (LoRA and full) over seeds, on CONFIG's pair and data."""
    from shadowft.compare import load_compare_config, table_rows
    from shadowft.stages import preflight

    cfg = load_compare_config(config, set_ or [])
    preflight(cfg.run)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from flows.cli import _quiet_prefect_defaults, _quiet_user_error_tracebacks

    _quiet_prefect_defaults()
    _quiet_user_error_tracebacks()
    from flows.compare import compare as compare_flow

    result = compare_flow(config=cfg)
    folder = Path(result["comparison"])
    summary = json.loads((folder / "summary.json").read_text())
    cols = [*summary["suites"], "mean"]
    table = Table(title=f"{summary['title']}: mean ± std over seeds in % (change vs Instruct)")
    for c in ["model", "seeds", *cols]:
        table.add_column(c, justify="left" if c == "model" else "right", no_wrap=c == "model")
    for row in table_rows(summary):
        table.add_row(*(row[c] for c in ["model", "seeds", *cols]))
    console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("table.md", "chart.png", "summary.json"):
            shutil.copyfile(folder / name, out / name)
        console.print(f"copied to {out}")
    console.print(f"table, chart and summary: {folder}")
