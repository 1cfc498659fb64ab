"""One CLI: the console script and `python -m shadowft` expose the same table of commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import shadowft
from shadowft.cli import COMMANDS, GROUPS, app

ROOT = Path(__file__).resolve().parent.parent
EVERY_COMMAND = {
    "similarity",
    "check-pair",
    "delta",
    "graft",
    "convert",
    "eval",
    "suites",
    "chat",
    "zoo",
    "store",
    "run",
    "demo",
    "compare",
    "serve",
    "plan",
}


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
    code = (
        "import sys; from shadowft.cli import app; "
        "print(sorted(m for m in ('prefect', 'torch', 'transformers', 'lm_eval', 'flows') if m in sys.modules))"
    )
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_every_command_module_imports_first_without_a_cycle():
    for mod in (
        "shadowft.cli_weights",
        "shadowft.cli_eval",
        "shadowft.cli_flows",
        "shadowft.cli_store",
        "shadowft.cli_zoo",
        "shadowft.serve",
        "shadowft.__main__",
    ):
        r = _run([sys.executable, "-c", f"import {mod}"])
        assert r.returncode == 0, (mod, r.stderr[-2000:])


def test_subcommand_help_and_user_errors():
    runner = CliRunner()
    for name in EVERY_COMMAND:
        assert runner.invoke(app, [name, "--help"]).exit_code == 0, name
    r = _run([sys.executable, "-m", "shadowft", "run", str(ROOT / "no-such.yaml")])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def _run_in(tmp: Path, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:
    import os
    import time

    env = {
        **os.environ,
        "COLUMNS": "120",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PREFECT_HOME": str(tmp / "prefect"),
    }
    for k in ("SHADOWFT_HOME", "PREFECT_API_URL"):
        env.pop(k, None)
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "shadowft", *args], capture_output=True, text=True, cwd=tmp, env=env, timeout=timeout
    )
    return r, time.monotonic() - t0


def test_missing_inputs_fail_before_prefect_is_imported_or_the_family_installed(tmp_path, monkeypatch):
    """A missing Base dir or data file: exit 2 with a hint, before Prefect starts and before the family is
    installed. The command runs with Python's import log on (PYTHONPROFILEIMPORTTIME): no module of Prefect
    (nor of `flows`) was imported by the process, so no Prefect API could have started. Checking the inputs
    after `from flows.shadow_ft import shadow_ft`, or in the flow, fails this test."""
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # every import, one `import time:` line on stderr
    toy = str(ROOT / "examples" / "toy.yaml")
    for override, says in (
        ("pair.base=/nonexistent", "base model '/nonexistent' is not a directory"),
        ("data.sources=[./nope.jsonl]", "data source './nope.jsonl' does not exist"),
    ):
        r, _ = _run_in(tmp_path, "run", toy, "--set", override)
        assert r.returncode == 2 and says in r.stderr and "hint:" in r.stderr, r.stderr[-3000:]
        imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
        assert {"shadowft.config", "shadowft.stages"} <= imported  # the log is on: the check's own modules
        top = {name.split(".")[0] for name in imported}
        assert "prefect" not in top and "flows" not in top, sorted(n for n in imported if "prefect" in n)[:5]
        assert not (tmp_path / ".shadowft").exists() and not (tmp_path / "runs").exists()


def test_a_mistyped_model_path_or_an_uncached_hub_id_offline_fails_in_seconds(tmp_path):
    """`models/my-base` where ./models exists is a path with a typo, not a hub id; a hub id offline
    (HF_HUB_OFFLINE) must be in the HF cache. Both are said before the hub or Prefect is asked (issue 26)."""
    (tmp_path / "models").mkdir()
    toy = str(ROOT / "examples" / "toy.yaml")
    r, seconds = _run_in(tmp_path, "run", toy, "--set", "pair.base=models/my-base")
    assert r.returncode == 2 and "'models/my-base': no such directory" in r.stderr, r.stderr
    assert seconds < 10 and "hub" not in r.stderr.split("hint:")[0] and "temporary server" not in r.stdout
    r, seconds = _run_in(tmp_path, "run", toy, "--set", "pair.instruct=no-such-org/no-such-model")
    assert r.returncode == 2 and "not in the HF cache while HF_HUB_OFFLINE is set" in r.stderr, r.stderr
    assert seconds < 10 and not (tmp_path / "runs").exists()


def test_config_errors_suggest_our_names_for_transformers_keys_and_show_the_list_form():
    from shadowft.config import load_config
    from shadowft.errors import ShadowFTError

    for override, says in (
        ("train.learning_rate=1e-4", "train.learning_rate: unknown key (did you mean 'lr'?)"),
        ("train.num_train_epochs=2", "(did you mean 'epochs'?)"),
        ("train.gradient_accumulation_steps=2", "(did you mean 'grad_accum'?)"),
        ("data.max_seq_length=512", "(did you mean 'max_length'?)"),
        ("eval.suites=gsm8kk", "eval.suites: must be a list in brackets, e.g. eval.suites=[gsm8kk] or "),
    ):
        try:
            load_config(ROOT / "examples" / "toy.yaml", [override])
        except ShadowFTError as exc:
            assert says in exc.message, exc.message
        else:
            raise AssertionError(f"{override} was accepted")


@pytest.mark.slow
def test_a_failed_run_prints_its_error_once_and_leaves_no_pending_id(tmp_path):
    """The user error inside a task: one `error:` + `hint:`, none of Prefect's four echo lines, exit 2."""
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}\n')
    r, _ = _run_in(tmp_path, "run", str(ROOT / "examples" / "toy.yaml"), "--set", "data.sources=[./bad.jsonl]")
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert out.count("malformed record") == 1 and out.count("hint:") == 1, out
    assert "ShadowFTError" not in out and "Traceback" not in out and "\\n" not in out
    assert not list((tmp_path / "runs" / "store" / "artifacts").rglob(".*.pending"))
    # a subclass (PairError from the pair check task): also once, and no "PairError:" state lines
    r, _ = _run_in(tmp_path, "run", str(ROOT / "examples" / "toy.yaml"), "--set", "pair.max_sigma=0.0001")
    out = r.stdout + r.stderr
    assert r.returncode == 2 and out.count("is above the threshold") == 1 and out.count("hint:") == 1, out
    assert "PairError" not in out and "Traceback" not in out
    # --verbose brings Prefect's own lines back (here: its failure states, without a traceback)
    r, _ = _run_in(
        tmp_path, "--verbose", "run", str(ROOT / "examples" / "toy.yaml"), "--set", "data.sources=[./bad.jsonl]"
    )
    assert r.returncode == 2 and "Finished in state Failed" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.slow
def test_quiet_mode_silences_the_generation_length_warning_and_verbose_keeps_it(zoo_family, tmp_path):
    """The embedded Instruct model's generation config sets max_new_tokens and lm-eval passes max_length:
    transformers warns on every generated batch (114 of a demo's lines). Quiet mode drops it."""
    code = (
        "import sys\n"
        "from shadowft.console import set_verbose\n"
        "set_verbose(sys.argv[1] == 'verbose')\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[2])\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[2])\n"
        "model.generate(tok('Reverse 123.', return_tensors='pt').input_ids, max_length=40, do_sample=False)\n"
    )
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    said = {}
    for mode in ("quiet", "verbose"):
        r = subprocess.run(
            [sys.executable, "-c", code, mode, str(zoo_family.root / "instruct")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        said[mode] = r.stderr
    assert "seem to have been set" in said["verbose"] and "seem to have been set" not in said["quiet"]


@pytest.mark.slow
def test_a_run_refused_by_the_promotion_gate_exits_3_with_the_table_of_drops(tmp_path):
    import json

    args = [
        "run",
        str(ROOT / "examples" / "toy.yaml"),
        "--set",
        "output.promote=true",
        "--set",
        "train.max_steps=3",
        "--set",
        "eval.limit=5",
        "--set",
        "baselines=[instruct]",
        "--set",
        "eval.suites=[toy-math,toy-reasoning]",
    ]
    r, _ = _run_in(tmp_path, *args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    promoted = (tmp_path / "runs" / "toy" / "promoted").resolve()
    summary = json.loads((promoted / "summary.json").read_text())
    summary["scores"]["shadow-ft"]["toy-reasoning"] += 0.5  # the promoted model was much better there
    (promoted / "summary.json").write_text(json.dumps(summary))
    r, _ = _run_in(tmp_path, *args)
    out = r.stdout + r.stderr
    assert r.returncode == 3, out[-3000:]
    assert out.count("not promoted: toy-reasoning -50.0 points") == 1 and "| toy-reasoning |" in out
    assert "PromotionRefused" not in out and (tmp_path / "runs" / "toy" / "promoted").resolve() == promoted
