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
    time.sleep(1.5)  # the watcher has seen the child and its grandchild
    grandchildren = [pid for pid, _ in _children(child)]
    assert grandchildren and _alive(child)
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
    time.sleep(2)
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
    """SIGTERM, then SIGKILL 3 s later (what systemd or supervisord does): server and worker are gone and
    the port is free for the next `shadowft serve`."""
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
    assert kids and not _port_free(port)
    serve.send_signal(signal.SIGTERM)
    time.sleep(3)
    serve.kill()
    serve.wait()
    assert _wait_dead(kids, timeout=15) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _port_free(port):
        time.sleep(0.2)
    assert _port_free(port)
