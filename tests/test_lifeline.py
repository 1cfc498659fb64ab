"""Nothing a command starts outlives it: SIGKILL of the command, or a supervisor's SIGTERM then SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watcher reads /proc (Linux)")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _state(pid: int) -> str:
    """The process's state letter in /proc (R, S, T for stopped, Z ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PREFECT_HOME": str(tmp / "prefect")}
    for k in ("SHADOWFT_HOME", "PREFECT_API_URL"):
        env.pop(k, None)
    return env


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append((int(d.name), cmd))
    return out


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def _sleeps(pid: int) -> int:
    """How often `pid` has gone to sleep (its voluntary context switches)."""
    line = next((x for x in _proc(pid, "status").splitlines() if x.startswith("voluntary_ctxt_switches")), "")
    return int(line.split()[1]) if line else -1


def _watcher_scans_from_now(command: int, timeout: float = 120.0) -> None:
    """Return once the lifeline watcher of `command` has completed a /proc scan that began after this
    call: it is seen asleep between its polls (time.sleep, at the kernel's nanosleep), then asleep there
    again after having gone to sleep at least once more. An event, not a guess at how long the watcher
    takes to start and poll on a busy machine."""
    deadline = time.monotonic() + timeout
    watcher, seen = None, None
    while time.monotonic() < deadline:
        if watcher is None:
            watcher = next((p for p, c in _children(command) if "shadowft.lifeline" in c), None)
        elif "nanosleep" in _proc(watcher, "wchan"):
            if seen is None:
                seen = _sleeps(watcher)
            elif _sleeps(watcher) > seen:
                return
        time.sleep(0.02)
    raise AssertionError(f"the watcher of {command} ({watcher}) was not seen between two polls in {timeout} s")


def test_children_in_their_own_session_die_with_a_sigkilled_parent(tmp_path):
    """A child in its own session (not reachable by a process-group kill) and its child are stopped."""
    script = (
        "import subprocess, sys, time\n"
        "from shadowft import lifeline\n"
        "lifeline.start()\n"
        "p = subprocess.Popen(['sh', '-c', 'sleep 300 & sleep 300'], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_env(tmp_path))
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not (grandchildren := [pid for pid, _ in _children(child)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert grandchildren and _alive(child)
    _watcher_scans_from_now(parent.pid)  # the watcher has seen the child and its grandchildren
    parent.kill()
    parent.wait()
    assert _wait_dead([child, *grandchildren]) == []


@pytest.mark.slow
def test_sigkilled_run_leaves_no_prefect_server(tmp_path):
    """`shadowft run` killed with SIGKILL while its temporary Prefect API (uvicorn) runs: the API stops too."""
    cmd = [
        sys.executable,
        "-m",
        "shadowft",
        "run",
        str(ROOT / "examples" / "toy.yaml"),
        "--set",
        "train.max_steps=2000",
    ]
    run = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    server = []
    while time.monotonic() < deadline and not server:
        server = [pid for pid, c in _children(run.pid) if "uvicorn" in c]
        time.sleep(0.3)
    assert server, "the temporary Prefect server did not start"
    _watcher_scans_from_now(run.pid)  # the watcher has seen the server
    run.kill()
    run.wait()
    assert _wait_dead(server) == []


def _port_free(port: int) -> bool:
    """Whether the next server could listen on `port`: bound as servers bind (SO_REUSEADDR, as uvicorn
    does), so connections left in TIME_WAIT by the killed server do not count, a live listener does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
def test_serve_stopped_by_a_supervisor_frees_its_port(tmp_path):
    """SIGTERM, then SIGKILL (what systemd or supervisord does) before serve's own SIGTERM handler could
    stop anything: server and worker (their own sessions) are stopped by the watcher (`shadowft.lifeline`)
    and the port is free for the next `shadowft serve`. The supervisor's SIGTERM reaches serve while it
    is stopped (SIGSTOP), stays pending, and SIGKILL ends it: serve's handler provably never ran, so this
    fails without the watcher (the children, in their own sessions, would be re-parented and keep running)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "shadowft",
        "serve",
        "--port",
        str(port),
        "--prefect-home",
        str(tmp_path / "ph"),
        "--log-dir",
        str(tmp_path / "logs"),
        "--nightly-data",
        str(tmp_path / "n.jsonl"),
    ]
    serve = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 240
    for line in serve.stdout:  # wait until the UI is announced (server, pool, deployments, worker up)
        if "Prefect UI" in line or time.monotonic() > deadline:
            break
    kids = [pid for pid, c in _children(serve.pid) if "prefect" in c]
    watcher = [pid for pid, c in _children(serve.pid) if "shadowft.lifeline" in c]
    assert len(kids) == 2 and watcher and not _port_free(port), _children(serve.pid)  # server, worker
    serve.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while _state(serve.pid) != "T" and time.monotonic() < deadline:  # the stop takes effect
        time.sleep(0.05)
    assert _state(serve.pid) == "T"
    _watcher_scans_from_now(serve.pid)  # serve starts nothing more; the watcher has seen all it started
    serve.send_signal(signal.SIGTERM)  # stays pending: a stopped process runs no handler
    serve.kill()
    assert serve.wait() == -signal.SIGKILL  # killed, not ended by its SIGTERM handler
    assert _wait_dead(kids, timeout=15) == []
    assert _wait_dead(watcher, timeout=15) == []  # the watcher, its work done, is gone too
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _port_free(port):
        time.sleep(0.2)
    assert _port_free(port)
