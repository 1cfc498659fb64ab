"""Nothing a command starts outlives it, even when the command is killed with SIGKILL.

Prefect's temporary API server (uvicorn), `shadowft serve`'s server and worker, training launchers and
their ranks are child processes. A process killed with SIGKILL runs no cleanup (no `atexit`, no
`finally`), and its children are re-parented to pid 1 and keep running. A parent-death signal
(`PR_SET_PDEATHSIG`) would need to be set inside each child, and the Prefect server is started by
Prefect's own code, not ours.

So `start()` launches a small watcher process (`python -m shadowft.lifeline PID`) in its own
session: it keeps a list of the command's descendants (from /proc, every half second, each with its
start time so that a reused pid is never hit) and, once the command is gone, however it ended, sends
SIGTERM to the ones still alive and their own descendants, then SIGKILL to those left after a grace
period. On a normal exit there is usually nothing left to stop: the watcher then just exits.
Linux only (/proc); elsewhere `start()` returns None.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 3.0


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every process, from /proc/*/stat."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        out[int(entry.name)] = (int(fields[1]), int(fields[19]))
    return out


def _descendants(roots: set[int], table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """pid -> start time of every process below `roots` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return found


def _alive(pids: dict[int, int]) -> dict[int, int]:
    """The processes of `pids` still running as the same process (same start time; not a zombie)."""
    table = _table()
    return {p: t for p, t in pids.items() if p in table and table[p][1] == t and _state(p) != "Z"}


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat[stat.rindex(")") + 2]


def _signal(pids: dict[int, int], sig: int) -> None:
    for pid in _alive(pids):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def watch(parent: int, poll: float = POLL_S, grace: float = GRACE_S) -> int:
    """Track `parent`'s descendants until it is gone; then stop what is left. -> how many were left."""
    me = os.getpid()
    table = _table()
    if parent not in table:
        return 0
    parent_start = table[parent][1]
    known: dict[int, int] = {}
    while True:
        table = _table()
        if parent not in table or table[parent][1] != parent_start or os.getppid() != parent:
            break
        known.update(_descendants({parent}, table))
        known.pop(me, None)
        known = {p: t for p, t in known.items() if p in table and table[p][1] == t}
        time.sleep(poll)
    # the command is gone: what it started, and what those started since, are stopped
    table = _table()
    left = _alive(known)
    left.update(_descendants(set(left), table))
    left.pop(me, None)
    if not left:
        return 0
    _signal(left, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(left):
        time.sleep(0.1)
    _signal(left, signal.SIGKILL)
    return len(left)


#: the watchers this process started (`start`): `stop_descendants` leaves them alone
_WATCHERS: set[int] = set()


def start() -> subprocess.Popen | None:
    """Start the watcher for this process (Linux); it ends by itself once this process has ended."""
    if not Path("/proc/self/stat").exists():
        return None
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowft.lifeline", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the terminal reaches the command, not the watcher
        close_fds=True,
    )
    _WATCHERS.add(proc.pid)
    return proc


def stop_descendants(grace: float = GRACE_S) -> int:
    """Stop every process this one started, and what those started (in any session), as the watcher
    would after this process ended: SIGTERM, then SIGKILL to those left after `grace` seconds (at
    once for 0). The watchers are spared: they end by themselves. -> how many there were (Linux;
    elsewhere 0)."""
    if not Path("/proc/self/stat").exists():
        return 0
    me = os.getpid()
    left = _descendants({me}, _table())
    for pid in _WATCHERS:
        left.pop(pid, None)
    if not left:
        return 0
    if grace > 0:
        _signal(left, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(left):  # an exited child is a zombie: not alive
            time.sleep(0.05)
    _signal(left, signal.SIGKILL)
    return len(left)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(0 if watch(int(sys.argv[1])) >= 0 else 1)
