"""Slots for heavy stages: how many run at once, which GPUs each gets, and a process of its own.

A *slot* is a group of `devices_per_stage` GPUs (an empty group on CPU). `plan_slots` divides the
visible or configured GPUs into slots; `SlotPool` hands them out with one file lock per slot
(`fcntl.flock`: held by an open file, so it works across threads and processes and is released when
its holder dies); `run_in_process` runs a stage function in a fresh spawned process that sees only
its slot's GPUs (`CUDA_VISIBLE_DEVICES`) and exits with its parent. With a Prefect server the
orchestration layer hands the slots out through Prefect's leased concurrency limits instead of these
locks (`tasks._slots`: one mechanism per case, and why).
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowft.config import ResourcesConfig
from shadowft.errors import ShadowFTError


@dataclass(frozen=True)
class Slot:
    index: int
    devices: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment of a process in this slot: only its GPUs are visible (none on CPU)."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, self.devices))} if self.devices else {}


def visible_gpus() -> list[int]:
    """Indices of the CUDA devices this process sees (after CUDA_VISIBLE_DEVICES), [] without CUDA."""
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:  # a broken CUDA install is "no GPU" here; the stage itself says what is wrong
        return []


def plan_slots(res: ResourcesConfig, gpus: list[int] | None = None) -> list[Slot]:
    """Divide the GPUs into slots of `devices_per_stage` each (default: as many slots as fit);
    on CPU, `slots` slots without devices (default 1, today's one-after-the-other behaviour)."""
    available = list(res.devices) if res.devices is not None else (visible_gpus() if gpus is None else gpus)
    if gpus is not None and res.devices is not None:
        unknown = sorted(set(res.devices) - set(gpus))
        if unknown:
            raise ShadowFTError(
                f"resources.devices names GPU(s) {unknown} but the visible ones are {gpus or 'none'}",
                hint="list visible GPU indices, or leave resources.devices empty for all of them",
            )
    if not available:
        return [Slot(i) for i in range(res.slots or 1)]
    per = res.devices_per_stage
    fit = len(available) // per
    if fit == 0:
        raise ShadowFTError(
            f"resources.devices_per_stage is {per} but only {len(available)} GPU(s) are available",
            hint="lower resources.devices_per_stage or give more resources.devices",
        )
    n = res.slots or fit
    if n > fit:
        raise ShadowFTError(
            f"resources.slots is {n} but {len(available)} GPU(s) at {per} per stage make {fit} slot(s)",
            hint="lower resources.slots or resources.devices_per_stage (a slot never shares a GPU)",
        )
    return [Slot(i, available[i * per : (i + 1) * per]) for i in range(n)]


class SlotPool:
    """Hands out `slots` under `root` (one lock file per slot) to threads and processes alike."""

    def __init__(self, root: Path, slots: list[Slot], poll_s: float = 0.2) -> None:
        self.root = Path(root)
        self.slots = slots
        self.poll_s = poll_s

    @contextlib.contextmanager
    def acquire(self, on_wait: Callable[[], None] | None = None) -> Iterator[Slot]:
        """Block until a slot is free; hold it for the block. `on_wait` is called once if we wait."""
        self.root.mkdir(parents=True, exist_ok=True)
        waited = False
        while True:
            for slot in self.slots:
                fd = os.open(self.root / f"slot-{slot.index}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    yield slot
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                return
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(self.poll_s)


# -- a stage in a process of its own ---------------------------------------------------------------

_PROGRESS_QUEUE: Any = None


def _child_init(env: dict[str, str], parent: int, queue: Any) -> None:
    """Runs first in the spawned process: its devices, and an exit when the parent is gone."""
    global _PROGRESS_QUEUE
    os.environ.update(env)
    _PROGRESS_QUEUE = queue

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)  # the run that started us is gone: nothing it started may outlive it

    threading.Thread(target=watch, daemon=True).start()


def child_progress(event: dict[str, Any]) -> None:
    """A progress callback for a function run by `run_in_process`: relayed to the parent's callback."""
    if _PROGRESS_QUEUE is not None:
        _PROGRESS_QUEUE.put(event)


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", fn(*args, **kwargs)
    except ShadowFTError as exc:  # sent back as data: exceptions with keyword fields do not unpickle
        return "shadowft", (type(exc).__name__, exc.message, exc.hint)


def run_in_process(
    fn: Callable[..., Any],
    *args: Any,
    env: dict[str, str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **kwargs: Any,
) -> Any:
    """`fn(*args, **kwargs)` in a fresh spawned process with `env` added to its environment.

    `fn` and its arguments must pickle (module-level functions, configs, paths). A `ShadowFTError`
    in the child is raised again here with its message and hint; `progress` receives what the child
    passes to `child_progress`.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue() if progress is not None else None
    stop = threading.Event()

    def relay() -> None:
        while not stop.is_set() or (queue is not None and not queue.empty()):
            if queue is not None and not queue.empty():
                assert progress is not None
                progress(queue.get())
            else:
                time.sleep(0.1)

    relayer = threading.Thread(target=relay, daemon=True) if queue is not None else None
    if relayer is not None:
        relayer.start()
    try:
        with ProcessPoolExecutor(
            max_workers=1, mp_context=ctx, initializer=_child_init, initargs=(env or {}, os.getpid(), queue)
        ) as pool:
            status, value = pool.submit(_call, fn, args, kwargs).result()
    finally:
        stop.set()
        if relayer is not None:
            relayer.join(timeout=5)
    if status == "shadowft":
        from shadowft import errors

        name, message, hint = value
        cls = getattr(errors, name, ShadowFTError)
        raise (cls if isinstance(cls, type) and issubclass(cls, ShadowFTError) else ShadowFTError)(message, hint=hint)
    return value
