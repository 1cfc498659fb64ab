"""Heavy-stage slots as Prefect's leased global concurrency limits: a run that holds a slot is
SIGKILLed, a second run waits for that slot and gets it once the lease has expired.

A real `prefect server start` (not the session's test server: that one is Prefect's ephemeral server,
which runs no repossessor, so it never frees an expired lease; `tasks._slots` explains the choice)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tasks._slots import LEASE_S

REPO = Path(__file__).resolve().parents[1]

# A flow run whose task holds slot 0 of `prefix` (one slot in all) and says when it has it.
HOLDER = """
import sys, time
from prefect import flow, task
from shadowft.resources import Slot
from tasks._slots import LeasedSlots

@task
def hold(prefix: str, tag: str) -> None:
    with LeasedSlots([Slot(0)], prefix=prefix, poll_s=0.2).acquire(on_wait=lambda: print("waiting", flush=True)):
        print("held", time.time(), flush=True)
        if tag == "first":
            time.sleep(3600)

@flow
def run(prefix: str, tag: str) -> None:
    hold(prefix, tag)

run(sys.argv[1], sys.argv[2])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_line(proc: subprocess.Popen, word: str, timeout: float, err: Path | None = None) -> str:
    end = time.time() + timeout
    assert proc.stdout is not None
    while time.time() < end:
        line = proc.stdout.readline()
        if line.startswith(word):
            return line
        if not line and proc.poll() is not None:
            said = err.read_text()[-3000:] if err is not None and err.exists() else ""
            raise AssertionError(f"process exited ({proc.returncode}) before saying {word!r}\n{said}")
    raise AssertionError(f"no {word!r} within {timeout} s")


@pytest.mark.slow
def test_leased_slot_of_a_killed_run_comes_back_within_its_lease(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1",  # the lease alone decides, not the loop
        PYTHONPATH=str(REPO),
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    procs: list[subprocess.Popen] = []
    try:
        end = time.time() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < end and server.poll() is None, "the Prefect server did not start"
            time.sleep(0.5)
        run_env = {**env, "PREFECT_API_URL": url, "SHADOWFT_SLOTS": "prefect"}
        prefix = f"test-slot-{uuid.uuid4().hex[:8]}"

        def start(tag: str) -> subprocess.Popen:
            p = subprocess.Popen(
                [sys.executable, "-c", HOLDER, prefix, tag],
                env=run_env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=(tmp_path / f"{tag}.err").open("w"),
                text=True,
            )
            procs.append(p)
            return p

        first = start("first")
        _wait_line(first, "held", 60, tmp_path / "first.err")
        # the UI's concurrency page: the slot's limit, one slot taken
        (limit,) = httpx.post(f"{url}/v2/concurrency_limits/filter", json={}).json()
        assert limit["name"] == f"{prefix}-0" and limit["limit"] == 1 and limit["active_slots"] == 1

        second = start("second")
        _wait_line(second, "waiting", 60, tmp_path / "second.err")  # the slot is taken: the second run's stage waits

        os.kill(first.pid, signal.SIGKILL)
        killed = time.time()
        first.wait(10)
        got = float(_wait_line(second, "held", LEASE_S + 30, tmp_path / "second.err").split()[1])
        assert got - killed <= LEASE_S + 5, f"slot came back {got - killed:.0f} s after the kill"
        assert second.wait(60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def test_a_busy_slot_while_polling_is_not_logged_as_an_error():
    """Prefect's acquisition service logs an ERROR for each refused try (423); polling the slots makes
    those expected, so they are dropped while LeasedSlots polls, and nothing else is."""
    import logging

    from tasks._slots import _QuietBusySlots

    def record(*args: object) -> logging.LogRecord:
        return logging.LogRecord(
            "prefect._internal.concurrency", logging.ERROR, "f", 1, "Service %r failed to process item %r", args, None
        )

    quiet = _QuietBusySlots()
    assert not quiet.filter(record("ConcurrencySlotAcquisitionWithLeaseService", (1, "x")))
    assert quiet.filter(record("EventsWorker", (1, "x")))
