"""Launched training: one process per rank through torchrun (here) or `accelerate launch`
(`accelerate.py`); this process waits.

The job goes to ``work_dir/launch/job.json``; every rank runs `shadowft.train.worker` on it. While
the job runs, rank 0's progress events (``events.jsonl``) are relayed to `progress`. A failed rank
fails the launch with its message, hint and the tail of its log. Nothing outlives the launch: the
launcher runs in its own session and is killed with it (SIGTERM, then SIGKILL) on any exit, and
every rank and the launcher itself die with their parent (Linux PR_SET_PDEATHSIG), so even a
SIGKILL of this process leaves no rank behind. Checkpoints are the Trainer's own, written
collectively; resume is decided before launch (`shadowft.train.checkpoints`) like for every launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shadowft.errors import ShadowFTError
from shadowft.train.launchers.base import Launcher, LaunchPlan, LaunchRequest

if TYPE_CHECKING:
    from shadowft.train.job import FitOutcome, TrainJob
    from shadowft.train.progress import ProgressFn

#: seconds between looks at the job (progress relay, exit)
POLL_S = 0.2
#: seconds the launcher gets to stop its ranks after SIGTERM before SIGKILL
GRACE_S = 10.0
LOG_TAIL_LINES = 40


class ProcessLauncher(Launcher):
    """Shared by torchrun and accelerate: start the command, relay, wait, report, clean up."""

    def command(self, job: TrainJob, plan: LaunchPlan, launch_dir: Path) -> list[str]:
        raise NotImplementedError

    def launch(self, job: TrainJob, plan: LaunchPlan, progress: ProgressFn | None) -> FitOutcome:
        launch_dir = job.work_dir / "launch" / f"node-{plan.node_rank}"  # each node's own (shared storage)
        shutil.rmtree(launch_dir, ignore_errors=True)
        (launch_dir / "logs").mkdir(parents=True)
        (launch_dir / "job.json").write_text(json.dumps(job.to_json(), indent=2) + "\n")
        (launch_dir / "events.jsonl").touch()
        cmd = self.command(job, plan, launch_dir)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("OMP_NUM_THREADS", "1")  # the ranks set torch's threads themselves (train.threads)
        # the launcher dies with this process too (see `shadowft.train.worker.die_with_parent`)
        full = [sys.executable, "-m", "shadowft.train.worker", "--exec", *cmd]
        with (launch_dir / "logs" / "launcher.log").open("w") as log:
            proc = subprocess.Popen(
                full, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=os.getcwd()
            )
        (launch_dir / "logs" / "launcher.pid").write_text(f"{proc.pid}\n")
        relay = _Relay(launch_dir / "events.jsonl", progress)
        try:
            while proc.poll() is None:
                relay.pump()
                time.sleep(POLL_S)
            relay.pump()
        finally:
            _stop(proc)
        if proc.returncode != 0:
            raise rank_failure(launch_dir, proc.returncode, plan.world_size)
        if plan.node_rank > 0:  # the main node's rank 0 publishes; this node only lent its ranks
            return _worker_node_outcome()
        return _outcome(launch_dir / "final")


class Torchrun(ProcessLauncher):
    """`torchrun` (torch.distributed.run): DDP, one node or several through a c10d rendezvous."""

    name = "torchrun"
    auto_priority = 10

    @classmethod
    def suits(cls, req: LaunchRequest) -> bool:
        return req.world_size > 1

    @classmethod
    def check(cls, req: LaunchRequest) -> None:
        if req.distributed in ("fsdp", "deepspeed"):
            raise ShadowFTError(
                f"train.distributed={req.distributed} is configured through an accelerate config",
                hint="set train.launcher=accelerate (or auto)",
            )

    def command(self, job: TrainJob, plan: LaunchPlan, launch_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={plan.num_nodes}",
            f"--nproc-per-node={plan.num_processes}",
            f"--node-rank={plan.node_rank}",
            f"--master-addr={plan.main_address}",
            f"--master-port={plan.main_port}",
            "--max-restarts=0",
            "-m",
            "shadowft.train.worker",
            str(launch_dir),
        ]


class _Relay:
    """Reads complete new lines of rank 0's event file and hands each event to `progress`."""

    def __init__(self, path: Path, progress: ProgressFn | None) -> None:
        self.path, self.progress, self.offset = path, progress, 0

    def pump(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.offset += end + 1
        for line in data[: end + 1].splitlines():
            if line.strip() and self.progress is not None:
                self.progress(json.loads(line))


def _stop(proc: subprocess.Popen) -> None:
    """Stop the launcher's session: SIGTERM (torchrun stops its ranks), then SIGKILL after a grace."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def rank_failure(launch_dir: Path, returncode: int, world_size: int) -> ShadowFTError:
    """The error for a failed launch: the first rank that failed, its message and its log's tail."""
    logs = launch_dir / "logs"
    errors = []
    for f in logs.glob("rank-*.error"):
        try:
            errors.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    if errors:
        first = min(errors, key=lambda e: e["time"])
        rank = first["rank"]
        tail = _tail(logs / f"rank-{rank}.log")
        hint = first.get("hint") or f"the whole log of that rank is {logs / f'rank-{rank}.log'}"
        return ShadowFTError(
            f"training rank {rank} of {world_size} failed: {first['type']}: {first['message']}\n"
            f"--- last lines of rank {rank}'s log ---\n{tail}",
            hint=hint,
        )
    tail = _tail(logs / "launcher.log")
    return ShadowFTError(
        f"the training launcher exited with status {returncode} before any rank reported an error\n"
        f"--- last lines of the launcher's log ---\n{tail}",
        hint=f"logs of every rank are in {logs}",
    )


def _worker_node_outcome() -> FitOutcome:
    from shadowft.train.job import FitOutcome

    def save(out: Path) -> None:
        raise ShadowFTError("a worker node (train.node_rank > 0) has no output to save: node 0 publishes")

    return FitOutcome(0, 0, 0.0, None, [], 0, 0, 0, save=save, world_size=0)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _outcome(final: Path) -> FitOutcome:
    """The outcome rank 0 published; `save` copies its weights into the output dir."""
    from shadowft.train.job import FitOutcome

    if not (final / "outcome.json").is_file():
        raise ShadowFTError(f"the training job finished but left no output in {final}")
    data = json.loads((final / "outcome.json").read_text())

    def save(out: Path) -> None:
        for item in final.iterdir():
            if item.name == "outcome.json":
                continue
            dest = out / item.name
            if item.is_dir():
                shutil.copytree(item, dest)
            else:
                shutil.copy2(item, dest)

    return FitOutcome(save=save, **data)
