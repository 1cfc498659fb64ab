"""One CLI: the console script and `python -m shadowft` expose the same table of commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import shadowft
from shadowft.cli import COMMANDS, GROUPS, app

ROOT = Path(__file__).resolve().parent.parent
EVERY_COMMAND = {"similarity", "check-pair", "delta", "graft", "convert", "eval", "suites", "zoo", "store",
                 "run", "demo", "compare", "serve", "plan"}


def _commands(help_text: str) -> set[str]:
    """Command names in the Commands panel of a rich `--help`."""
    panel = help_text.split("Commands", 1)[1]
    return {m.group(1) for m in re.finditer(r"^[│|]\s+([a-z][a-z-]*)\s{2,}", panel, re.M)}


def _console_script() -> list[str]:
    """The `shadowft` script as pyproject declares it, run without depending on an install."""
    entry = re.search(r'^shadowft = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert entry is not None, "pyproject.toml declares no `shadowft` script"
    module, func = entry.group(1).split(":")
    return [sys.executable, "-c", f"import sys; sys.argv[0] = 'shadowft'; from {module} import {func}; {func}()"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "120", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_table_has_every_command():
    assert set(COMMANDS) | set(GROUPS) == EVERY_COMMAND


def test_console_script_and_module_list_the_same_commands():
    script, module = _run([*_console_script(), "--help"]), _run([sys.executable, "-m", "shadowft", "--help"])
    assert script.returncode == 0 and module.returncode == 0, script.stderr + module.stderr
    assert _commands(script.stdout) == _commands(module.stdout) == EVERY_COMMAND


def test_version():
    for cmd in (_console_script(), [sys.executable, "-m", "shadowft"]):
        r = _run([*cmd, "--version"])
        assert r.returncode == 0 and r.stdout.strip() == f"shadowft {shadowft.__version__}"


def test_help_imports_no_heavy_module_and_no_prefect():
    code = ("import sys; from shadowft.cli import app; "
            "print(sorted(m for m in ('prefect', 'torch', 'transformers', 'lm_eval', 'flows') if m in sys.modules))")
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_every_command_module_imports_first_without_a_cycle():
    for mod in ("shadowft.cli_weights", "shadowft.cli_eval", "shadowft.cli_flows", "shadowft.cli_store",
                "shadowft.cli_zoo", "shadowft.serve", "shadowft.__main__"):
        r = _run([sys.executable, "-c", f"import {mod}"])
        assert r.returncode == 0, (mod, r.stderr[-2000:])


def test_subcommand_help_and_user_errors():
    runner = CliRunner()
    for name in EVERY_COMMAND:
        assert runner.invoke(app, [name, "--help"]).exit_code == 0, name
    r = _run([sys.executable, "-m", "shadowft", "run", str(ROOT / "no-such.yaml")])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
