"""CLI output off a terminal: one message, one line, whatever the width (issue: a long path split in two)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.table import Table

from shadowft.console import LineConsole
from shadowft.store import ArtifactStore

ROOT = Path(__file__).resolve().parent.parent
LONG = "a-folder-with-a-rather-long-name-" * 5  # 165 characters


def test_off_a_terminal_a_message_stays_on_one_line_and_a_table_keeps_its_layout():
    out = io.StringIO()
    console = LineConsole(file=out, width=40)
    assert not console.is_terminal
    message = f"wrote 3 tensors as safetensors to /tmp/{LONG}/graft"
    console.print(f"[green]wrote[/] 3 tensors as safetensors to /tmp/{LONG}/graft")
    table = Table("model", "score")
    table.add_row("instruct", "42.0")
    console.print(table)
    wide = Table("suite", "task", "what it measures")
    wide.add_row("toy-domain", "toy_domain_reverse", "reversing a digit string, a skill Instruct lacks")
    console.print(wide)
    lines = out.getvalue().splitlines()
    assert lines[0] == message
    small = [line for line in lines[1:] if "instruct" in line or "model" in line]
    assert small and all(len(line) <= 40 for line in small)  # a table that fits keeps its layout
    # a wider table is not cut: every cell whole, one row a line, the box intact
    row = next(line for line in lines if "toy-domain" in line)
    assert "toy_domain_reverse" in row and "a skill Instruct lacks" in row
    assert len({len(line) for line in lines[len(lines) - 5 :]}) == 1


def test_on_a_terminal_rich_wraps_as_usual():
    out = io.StringIO()
    console = LineConsole(file=out, width=40, force_terminal=True, color_system=None)
    console.print(f"wrote to /tmp/{LONG}")
    assert len(out.getvalue().splitlines()) > 1


def _plain_env(tmp: Path, columns: str | None) -> dict[str, str]:
    """What a CI machine has: no terminal, no COLUMNS (or a narrow one), TERM=dumb, the C locale."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "TERM": "dumb", "LANG": "C"}
    env["PYTHONPATH"] = str(ROOT)
    if columns is not None:
        env["COLUMNS"] = columns
    return env


def test_cli_messages_naming_long_paths_are_one_line_each_without_a_wide_terminal(tmp_path):
    store_root = tmp_path / LONG / "runs" / "store"
    ArtifactStore(store_root).build("s", "k", lambda d: (d / "f").write_text("x") and None)
    missing = tmp_path / LONG / "no-such-config.yaml"
    for columns in (None, "40", "80"):
        env = _plain_env(tmp_path, columns)
        ok = subprocess.run(
            [sys.executable, "-m", "shadowft", "store", "verify", "--root", str(store_root)],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        assert f"store {store_root}: 1 complete artifact(s)" in ok.stdout.splitlines(), (columns, ok.stdout)
        bad = subprocess.run(
            [sys.executable, "-m", "shadowft", "run", str(missing)],
            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
        assert bad.returncode == 2
        error_lines = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and str(missing) in error_lines[0], (columns, bad.stderr)
