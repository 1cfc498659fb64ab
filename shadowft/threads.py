"""CPU threads for torch in training and evaluation: one default that does not oversubscribe.

The default depends only on the model's size and the machine's cores, never on the momentary load,
so the same config gives the same job (and the same weights) on the same machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

#: Below this many parameters a model trains fastest on one thread per process: its matmuls are too
#: small for threads to pay, and extra threads collapse when another process shares the cores
#: (measured: 10x slower on a 2-core machine beside one busy process).
SMALL_MODEL_PARAMS = 50_000_000


@lru_cache(maxsize=1)
def physical_cores() -> int:
    """Physical CPU cores usable by this process (hyperthreads not counted), from /proc/cpuinfo."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        cores, phys, core = set(), None, None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not key and phys is not None:
                cores.add((phys, core))
                phys = core = None
        if phys is not None:
            cores.add((phys, core))
        if cores:
            return max(1, min(usable, len(cores)))
    except OSError:
        pass
    return max(1, usable)


def resolve_threads(threads: int | None, params: int, local_processes: int = 1) -> int:
    """Torch threads per process: `threads` when set, else 1 for small models, else the physical cores
    shared among this node's processes."""
    if threads is not None:
        return threads
    if params < SMALL_MODEL_PARAMS:
        return 1
    return max(1, physical_cores() // max(1, local_processes))


@contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` for the block (restored afterwards).

    The setting is the calling thread's own (OpenMP's per-thread ICV), so stages running side by side
    in threads each keep theirs (tests/test_concurrency.py checks it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
