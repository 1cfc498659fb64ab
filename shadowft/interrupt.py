"""Ctrl-C for the commands that run a flow (`run`, `demo`, `compare`): stop in seconds, say so once.

A terminal's Ctrl-C sends SIGINT to its whole foreground process group. Prefect's own temporary API
server is a child in that group: it died first, and the run then hung for minutes retrying the API
with a traceback per request. So these commands start the temporary server themselves, in its own
session (`TemporaryServer`: the same uvicorn app Prefect would start), where Ctrl-C does not reach
it, and stop it on exit. The lifeline watcher (`shadowft.lifeline`) still reaps it on SIGKILL.

`install()` sets the SIGINT handler of such a command:

- first Ctrl-C: one line on stderr naming the stages that were running and how to resume. While a
  flow runs, a thread records the flow run (and its running task runs) as Cancelled on the API,
  which is still up, then stops the command's children and ends the process with exit code 130
  (`exit_interrupted`). It does not raise `KeyboardInterrupt` into the flow: Prefect's engine
  would first wait for every task thread, i.e. for a running training to finish. Outside a flow
  (the server starting, the summary printing) it raises `KeyboardInterrupt`, and the command
  calls `exit_interrupted`. Either way a watchdog ends the process after `GRACE_S` at the latest;
- second Ctrl-C: children killed and exit at once.

The terminal's log handlers drop every record after the first Ctrl-C (`interrupted()`): what the
threads still log goes to the API only. This module never imports Prefect: the command passes in
how to find and cancel its flow run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from shadowft import lifeline
from shadowft.errors import ShadowFTError

#: seconds the main thread gets to record the interruption before the watchdog ends the process
GRACE_S = 10.0
#: seconds children get between SIGTERM and SIGKILL when the command stops
CHILD_GRACE_S = 3.0
EXIT_CODE = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C

_running: Counter[str] = Counter()
_lock = threading.RLock()  # re-entered by the SIGINT handler when it interrupts `stage`
_exit_lock = threading.Lock()
_state: dict[str, Any] = {"interrupted": False, "command": "", "server": None, "current_run": None, "cancel_run": None}


# -- what is running ---------------------------------------------------------------------------------


@contextlib.contextmanager
def stage(label: str) -> Iterator[None]:
    """Mark the stage `label` (a task run's name: train-base, evaluate-instruct, ...) as running."""
    with _lock:
        _running[label] += 1
    try:
        yield
    finally:
        with _lock:
            _running[label] -= 1
            if _running[label] <= 0:
                del _running[label]


def running() -> list[str]:
    """The stages running now, in the order they started."""
    with _lock:
        return list(_running)


def interrupted() -> bool:
    """Whether Ctrl-C was pressed: the terminal's log handlers then stay silent."""
    return bool(_state["interrupted"])


def message() -> str:
    """The one line said on the first Ctrl-C."""
    stages = running()
    what = f"interrupted during {', '.join(stages)}" if stages else "interrupted"
    command = _state["command"] or "the same command"
    return (
        f"{what}: run {command} again to resume "
        "(finished stages come back from the cache, a training from its last checkpoint)"
    )


# -- the SIGINT handler ------------------------------------------------------------------------------


def install(
    argv: list[str] | None = None,
    *,
    current_run: Callable[[], Any] | None = None,
    cancel_run: Callable[[Any], None] | None = None,
) -> None:
    """Handle Ctrl-C in this command as described in the module docstring (main thread only).

    `current_run()` -> the flow run the main thread is executing, or None (called in the signal
    handler: no I/O); `cancel_run(run)` records it as cancelled (called from a thread)."""
    argv = list(sys.argv if argv is None else argv)
    prog = "shadowft" if argv and (argv[0].endswith("shadowft") or argv[0].endswith("__main__.py")) else argv[0]
    _state.update(
        command=shlex.join([prog, *argv[1:]]) if argv else "",
        interrupted=False,
        current_run=current_run,
        cancel_run=cancel_run,
    )
    signal.signal(signal.SIGINT, _on_sigint)


def _on_sigint(signum: int, frame: Any) -> None:
    if _state["interrupted"]:  # the second Ctrl-C: no more waiting
        _kill_now()
    _state["interrupted"] = True
    _say(message())
    threading.Thread(target=_watchdog, name="shadowft-interrupt-watchdog", daemon=True).start()
    run = None
    with contextlib.suppress(Exception):
        run = _state["current_run"]() if _state["current_run"] else None
    if run is None:
        raise KeyboardInterrupt  # nothing runs in threads: the command unwinds and calls exit_interrupted
    threading.Thread(target=_cancel_and_exit, args=(run,), name="shadowft-interrupt", daemon=True).start()


def _cancel_and_exit(run: Any) -> None:
    with contextlib.suppress(Exception):  # the UI shows the run Cancelled; not worth a traceback when it fails
        _state["cancel_run"](run)
    exit_interrupted()


def _say(line: str) -> None:
    """Write a line to stderr without Python's stream locks (a signal handler may interrupt a write)."""
    if not line:
        return
    tty = os.isatty(2)
    text = ("\x1b[?25h\n\x1b[31m" + line + "\x1b[0m\n") if tty else line + "\n"  # show the cursor a bar hid
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace"))


def _watchdog() -> None:
    time.sleep(GRACE_S)
    exit_interrupted()


def exit_interrupted() -> NoReturn:
    """Stop what this command started (the temporary server, launchers, ranks) and exit 130 at once:
    threads still busy in a stage (an in-process training) are not waited for."""
    if not _state["interrupted"]:  # a KeyboardInterrupt without our handler (not installed in time)
        _state["interrupted"] = True
        _say(message())
    with _exit_lock:  # the main thread and the watchdog: one of them does it
        _stop_children(CHILD_GRACE_S)
        _flush()
        os._exit(EXIT_CODE)


def _kill_now() -> NoReturn:
    _stop_children(0.0)
    _flush()
    os._exit(EXIT_CODE)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _stop_children(grace: float) -> None:
    """The temporary server, launchers, ranks, slot processes: all descendants but the lifeline watcher."""
    lifeline.stop_descendants(grace)


# -- the temporary Prefect server --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TemporaryServer:
    """Prefect's temporary API (what Prefect starts when no API is configured: its uvicorn app with the
    UI and background services off), in a session of its own so that Ctrl-C does not reach it."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Any) -> None:
        self.proc, self.port, self._log = proc, port, log

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def start(
        cls, env: Mapping[str, str] | None = None, timeout: float = 120.0, verbose: bool = False
    ) -> TemporaryServer:
        """Start the server and wait for its health check; `env`: Prefect's settings for it."""
        spec = importlib.util.find_spec("prefect")  # where it is installed; nothing of it runs here
        if spec is None or spec.origin is None:
            raise ShadowFTError("Prefect is not installed", hint="pip install -e . (from the repository root)")
        app_dir = str(Path(spec.origin).resolve().parent.parent)
        for _ in range(3):  # a port taken between the choice and the bind: another port
            port = _free_port()
            log = None if verbose else tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "--app-dir",
                    app_dir,
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env={
                    **os.environ,
                    **(env or {}),
                    "PREFECT_UI_ENABLED": "0",
                    "PREFECT__SERVER_EPHEMERAL": "1",
                    "PREFECT__SERVER_FINAL": "1",
                },
                stdin=subprocess.DEVNULL,
                stdout=log or None,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=True,  # Ctrl-C in the terminal reaches the command, not its API
            )
            server = cls(proc, port, log)
            if server._wait_healthy(timeout):
                _state["server"] = server
                import atexit

                atexit.register(server.stop)  # after Prefect's log and event workers drained (thread exit)
                return server
            server.stop()
            if proc.returncode != 3:  # uvicorn's exit code when the port is taken
                break
        raise ShadowFTError(
            f"Prefect's temporary API server did not start within {timeout:.0f} s: {server.output_tail()}",
            hint="set PREFECT_API_URL to a running Prefect server (`prefect server start`), or retry",
        )

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            time.sleep(0.1)
        return False

    def output_tail(self, n: int = 2000) -> str:
        if self._log is None or self._log.closed:
            return "(its output went to the terminal)"
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip()
        return text[-n:] or f"no output (exit code {self.proc.poll()})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        if _state["server"] is self:
            _state["server"] = None
