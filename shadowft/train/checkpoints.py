"""Resumable training: which checkpoints are complete, and whose they are.

Every launcher writes checkpoints the same way (transformers' ``checkpoint-<step>`` dirs under
``work_dir/checkpoints``), so resuming after a crash is decided here once, before any process starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shadowft.errors import ShadowFTError
from shadowft.files import write_json_atomic

CHECKPOINT_PREFIX = "checkpoint-"
# Settings that change the checkpoint cadence or logging, not the job: they may differ on a resume.
# (Where the rendezvous is, which node this is, the tracker and the launcher do not change the job either.)
_NOT_PART_OF_JOB = {
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "node_rank",
    "main_address",
    "main_port",
    "report_to",
    "launcher",
}


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name[len(CHECKPOINT_PREFIX) :])


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint dirs in `ckpt_dir` that were written completely (trainer_state.json is written last),
    sorted by step."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit():
            state = p / "trainer_state.json"
            try:
                json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            found.append(p)
    return sorted(found, key=checkpoint_step)


def remove_incomplete(ckpt_dir: Path, keep: list[Path]) -> list[str]:
    """Delete checkpoint dirs not in `keep` (half-written by a crash). -> their names"""
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def is_finished(checkpoint: Path) -> bool:
    """Whether a checkpoint is the last step of its run (global_step reached max_steps)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state.get("max_steps") or 0) > 0 and int(state["global_step"]) >= int(state["max_steps"])


def claim_work_dir(work_dir: Path, job: dict[str, Any]) -> Path | None:
    """Make `work_dir` this job's: refuse checkpoints of another job, drop incomplete ones, record the job.

    `job` is plain JSON naming the inputs and the spec (keys under ``spec`` in `_NOT_PART_OF_JOB` are
    dropped). -> the checkpoint to resume from, or None for a fresh start.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = work_dir / "checkpoints"
    job = {**job, "spec": {k: v for k, v in job["spec"].items() if k not in _NOT_PART_OF_JOB}}
    job_file = work_dir / "job.json"
    done = complete_checkpoints(ckpt_dir)
    if job_file.is_file() and done:
        previous = json.loads(job_file.read_text())
        if previous != job:
            before, now = previous.get("spec", {}), job["spec"]
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            changed += [k for k in job if k != "spec" and previous.get(k) != job[k]]
            raise ShadowFTError(
                f"{work_dir} holds checkpoints of a different training job (changed: {', '.join(changed)})",
                hint="use a fresh work_dir, or delete this one to start over",
            )
    remove_incomplete(ckpt_dir, keep=done)
    write_json_atomic(job_file, job)
    return done[-1] if done else None
