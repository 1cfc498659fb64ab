"""One rank of a launched training job: ``python -m shadowft.train.worker LAUNCH_DIR``.

torchrun / accelerate launch start this once per rank (RANK, WORLD_SIZE, ... in the environment).
Every rank runs the same `fit` on the job in ``LAUNCH_DIR/job.json``; the Trainer sees the
environment and trains data-parallel. The launcher reads back what the ranks leave in LAUNCH_DIR:

    events.jsonl        rank 0's progress events, one JSON object a line (relayed by the launcher)
    logs/rank-N.log     everything rank N printed
    logs/rank-N.error   rank N's failure: message, hint, type, time (the earliest one is the cause)
    logs/rank-N.pid     rank N's process id (to prove none outlives the job)
    final/              the trained weights + outcome.json, renamed into place by rank 0 when complete
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from shadowft.errors import ShadowFTError


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so no rank outlives a killed launcher
    (torchrun starts ranks in their own sessions, out of reach of a process-group kill)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class EventWriter:
    """Rank 0's progress sink: appends each event as a JSON line (flushed, so the launcher sees it)."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("a", encoding="utf-8")

    def __call__(self, event: dict[str, Any]) -> None:
        self.fh.write(json.dumps(event, default=float) + "\n")
        self.fh.flush()


def _redirect_output(log: Path) -> None:
    """Send this process's stdout / stderr (also those of C extensions) to its own log file."""
    fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_rank(launch_dir: Path) -> None:
    """Fit the job as this rank; rank 0 publishes the outcome into ``launch_dir/final``."""
    from shadowft.train.fit import fit
    from shadowft.train.job import TrainJob

    rank = int(os.environ.get("RANK", "0"))
    job = TrainJob.from_json(json.loads((launch_dir / "job.json").read_text()))
    progress = EventWriter(launch_dir / "events.jsonl") if rank == 0 else None
    outcome = fit(job, progress)
    final, tmp = launch_dir / "final", launch_dir / "final.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if outcome.collective_save:
        _barrier()
        outcome.save(tmp)  # every rank: the shards are gathered to the main process
        _barrier()
    elif rank == 0:
        outcome.save(tmp)
    if rank == 0:
        (tmp / "outcome.json").write_text(json.dumps(outcome.to_json(), default=float) + "\n")
        tmp.rename(final)  # complete or absent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--exec":  # the launcher's own shim: become the command, dying with our parent
        die_with_parent()
        os.execv(argv[1], argv[1:])
    launch_dir = Path(argv[0])
    rank = int(os.environ.get("RANK", "0"))
    die_with_parent()
    logs = launch_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"rank-{rank}.pid").write_text(f"{os.getpid()}\n")
    _redirect_output(logs / f"rank-{rank}.log")
    try:
        run_rank(launch_dir)
    except BaseException as exc:  # noqa: BLE001  (recorded for the launcher, then the rank fails)
        record = {
            "rank": rank,
            "time": time.time(),
            "type": type(exc).__name__,
            "message": exc.message if isinstance(exc, ShadowFTError) else str(exc) or type(exc).__name__,
            "hint": exc.hint if isinstance(exc, ShadowFTError) else None,
        }
        (logs / f"rank-{rank}.error").write_text(json.dumps(record) + "\n")
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
