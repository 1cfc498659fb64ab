"""Terminal tables at 80 columns: every cell whole and every line within the width (issue 26)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

from shadowft.console import LineConsole
from shadowft.evaluate import list_suites
from shadowft.tables import pct, score_table, with_change

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _scores() -> tuple[list[str], list[dict[str, str]]]:
    """The demo's table: three models, four toy suites, own-data and the mean; cells like `42.0 (+12.5)`."""
    suites = ["toy-math", "toy-coding", "toy-reasoning", "toy-domain", "own-data", "mean"]
    rows = []
    for m, model in enumerate(["instruct", "direct", "shadow-ft"]):
        row = {"model": model}
        for i, s in enumerate(suites):
            change = None if model == "instruct" else (-1) ** i * (0.1 * m + 0.0123 * i)
            row[s] = with_change(pct(0.4 + 0.05 * i), change)
        rows.append(row)
    return ["model", *suites], rows


def _terminal(width: int) -> tuple[LineConsole, io.StringIO]:
    out = io.StringIO()
    return LineConsole(file=out, width=width, force_terminal=True, color_system=None), out


def test_score_table_at_80_columns_keeps_each_score_with_its_change():
    columns, rows = _scores()
    console, out = _terminal(80)
    console.print(score_table("Scores in % (change vs Instruct)", columns, rows))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    text = out.getvalue()
    for row in rows:  # every cell whole, on one line (the change never wraps away from its score)
        assert all(row[c] in text for c in columns), (row, text)
    # suites down, models across: a line per suite, each with the three models' cells in order
    for suite in columns[1:]:
        line = next(x for x in lines if x.lstrip().startswith(suite + " "))
        cells = [row[suite] for row in rows]
        assert [line.index(c) for c in cells] == sorted(line.index(c) for c in cells)
    wide, out = _terminal(200)
    wide.print(score_table("Scores", columns, rows))
    assert "┃ model" in out.getvalue()  # a terminal wide enough: the table as it was


def test_a_table_too_wide_even_transposed_becomes_a_list_of_blocks():
    columns, rows = _scores()
    many = [{**r, "model": f"{r['model']}-lora-seed-{i}"} for i in range(3) for r in rows]  # 9 models
    console, out = _terminal(80)
    console.print(score_table("Compare", columns, many))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    for row in many:
        assert row["model"] in lines  # a heading per model
        assert all(row[c] in out.getvalue() for c in columns[1:])


def test_off_a_terminal_a_wide_table_keeps_its_natural_layout():
    columns, rows = _scores()
    out = io.StringIO()
    LineConsole(file=out, width=80).print(score_table("Scores", columns, rows))
    assert "┃ model" in out.getvalue() and max(len(x) for x in out.getvalue().splitlines()) > 80


def test_suites_listing_on_an_80_column_terminal():
    """`shadowft suites` in a real pseudo-terminal of 80 columns: cells were cut to ~6 characters
    and the listing took ~170 lines; now every description is whole and every line fits."""
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-m", "shadowft", "suites"], stdout=sub, stderr=sub, env=env)
    os.close(sub)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(timeout=60) == 0
    os.close(main)
    lines = [ANSI.sub("", x).rstrip() for x in shown.decode().replace("\r", "").splitlines()]
    assert all(len(x) <= 80 for x in lines), lines
    listed = list_suites()
    assert len(lines) < 6 * len(listed)
    flat = " ".join(" ".join(lines).split())
    for suite in listed:
        assert suite.name in lines  # its own heading line
        assert " ".join(suite.description.split()) in flat  # whole, "[bracketed]" text included
