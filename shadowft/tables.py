"""Score formatting and markdown tables, shared by the run report and the comparison (and the CLI).

Scores are fractions in [0, 1] everywhere in the data; every table shows them in % with one decimal,
changes signed, a missing value as "-".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


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


# -- terminal tables that stay readable when narrow ------------------------------------------------

#: A cell this short (header included) shares a line with its neighbours in the list layout.
SHORT_CELL = 24


def _plain(cell: object) -> str:
    from rich.text import Text

    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(str(cell)).plain if isinstance(cell, str) else str(cell)


def _columns(table: Any) -> tuple[list[str], list[list[str]]]:
    """A rich table's headers and rows as markup strings (cells as given to `add_row`)."""
    headers = [str(c.header) for c in table.columns]
    cols = [list(c.cells) for c in table.columns]
    rows = [[str(col[i]) if i < len(col) else "" for col in cols] for i in range(table.row_count)]
    return headers, rows


def _natural_width(console: Any, renderable: Any) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10_000), renderable).maximum


def _compact(table: Any) -> Any:
    """The same table with the least chrome: no outer edge, one space between columns."""
    from rich import box
    from rich.table import Table

    headers, rows = _columns(table)
    out = Table(title=table.title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    for col, header in zip(table.columns, headers, strict=True):
        out.add_column(header, justify=col.justify, no_wrap=True)
    for row in rows:
        out.add_row(*row)
    return out


def _transposed(table: Any) -> Any:
    """Rows become columns: a score table of many suites and few models reads down the suites."""
    from rich import box
    from rich.table import Table

    headers, rows = _columns(table)
    out = Table(title=table.title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1))
    out.add_column(headers[0], no_wrap=True)
    for row in rows:
        out.add_column(row[0], justify="right", no_wrap=True)
    for i, header in enumerate(headers[1:], start=1):
        out.add_row(header, *(row[i] for row in rows))
    return out


def _as_list(table: Any, width: int) -> Any:
    """One block per row: its first cell as a heading, short cells together on a line (`header value`,
    separated by `·`), long ones wrapped on lines of their own; empty and "-" cells left out."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    headers, rows = _columns(table)
    parts: list[Any] = []
    if table.title:
        parts.append(Text.from_markup(f"[i]{table.title}[/]", justify="left"))
    for row in rows:
        parts.append(Text.from_markup(f"[b]{row[0]}[/]"))
        short: list[str] = []
        long: list[str] = []
        for header, cell in zip(headers[1:], row[1:], strict=True):
            if _plain(cell).strip() in ("", "-"):
                continue
            item = f"[dim]{header}[/] {cell}"
            (short if len(_plain(item)) <= SHORT_CELL else long).append(item)
        lines = [" · ".join(short)] if short else []
        parts += [Padding(Text.from_markup(line), (0, 0, 0, 2)) for line in [*lines, *long]]
    return Group(*parts)


def fit_table(table: Any, console: Any, width: int | None = None) -> Any:
    """A rich table as it is when it fits `width` (the console's), else the first layout that does:
    the table without its chrome, then (for a `ScoreTable`) transposed, else a list of blocks.
    At 80 columns a wide table was cut to ~6 characters a cell and one row took a dozen lines."""
    width = width or console.width
    if _natural_width(console, table) <= width:
        return table
    candidates = [_compact(table)]
    if getattr(table, "transpose_when_narrow", False):
        candidates.append(_transposed(table))
    for candidate in candidates:
        if _natural_width(console, candidate) <= width:
            return candidate
    return _as_list(table, width)


def score_table(title: str, columns: list[str], rows: list[dict[str, str]]) -> Any:
    """A rich table of formatted score rows (model, then a cell per suite): on a narrow terminal it
    is shown transposed (suites down, models across) rather than cut (`fit_table`)."""
    from rich.table import Table

    table = Table(title=title)
    table.transpose_when_narrow = True  # type: ignore[attr-defined]
    for c in columns:
        table.add_column(c, justify="left" if c == "model" else "right", no_wrap=c == "model")
    for row in rows:
        table.add_row(*(row.get(c, "") for c in columns))
    return table
