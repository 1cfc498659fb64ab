"""Score formatting and markdown tables, shared by the run report and the comparison (and the CLI).

Scores are fractions in [0, 1] everywhere in the data; every table shows them in % with one decimal,
changes signed, a missing value as "-".
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pct(x: float | None, signed: bool = False) -> str:
    """A fraction as % with one decimal (`+` for `signed`), "-" for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def with_change(text: str, change: float | None) -> str:
    """``text (+1.2)``: a cell followed by its change in % points (unchanged when there is none)."""
    return text if change is None else f"{text} ({pct(change, signed=True)})"


def markdown_row(cells: Sequence[str]) -> str:
    """``| a | b | |``: one markdown table row (an empty cell stays empty)."""
    return "|" + "".join(f" {c} |" if c else " |" for c in cells)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> list[str]:
    """Header, separator and rows; the first `text_columns` columns are left-aligned, the rest (scores)
    right-aligned."""
    sep = ["---"] * text_columns + ["---:"] * (len(columns) - text_columns)
    return [markdown_row(columns), markdown_row(sep), *(markdown_row(r) for r in rows)]


def chance_cells(summary: dict, suites: Sequence[str]) -> list[str]:
    """The chance level of each suite in %, as table cells."""
    return [pct(summary["chance"].get(s)) for s in suites]
