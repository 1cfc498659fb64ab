"""The streaming engine every graft method and update source runs on.

One loop writes the output in the planned shard layout (`checkpoint.ShardedWriter`): a tensor
without an update is copied by the kernel (`copy_file_range`); a tensor with one is computed
chunk by chunk: the update source fills a float32 work buffer, the method combines it with the
Instruct chunk, and the result, rounded to Instruct's dtype in the same pass, is appended to the
shard. Inputs are read with positioned reads into reused staging buffers, and a reader thread
fills the next chunk of each stream while the current one is computed, so anonymous memory stays
at a few chunk buffers whatever the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from shadowft.checkpoint import Checkpoint, ShardedWriter
from shadowft.errors import ShadowFTError

if TYPE_CHECKING:
    from shadowft.graft.methods.base import GraftMethod

# float32 elements per work buffer: 1 MB stays in the CPU's L2 cache, so each chunk's passes
# (convert, subtract, add, store) touch main memory only to read the inputs and write the output.
CHUNK = 1 << 18
Progress = Callable[[str, int], None]  # (tensor name, bytes done for it)
Emit = Callable[[torch.Tensor], None]


class DivergedError(ShadowFTError):
    """The update holds NaN or Inf: the tuned model diverged."""


class Buffers:
    """Preallocated work buffers, reused for every tensor: one float32 accumulator, two staging
    buffers per input stream (double buffering), and one reader thread that fills the next chunk
    of each stream while the current one is computed (positioned reads release the GIL).
    Used as a context manager, it also runs the arithmetic on one thread (see `__enter__`)."""

    def __init__(self, chunk: int = CHUNK, prefetch: bool = True) -> None:
        self.chunk = chunk
        self.work = torch.empty(chunk, dtype=torch.float32)
        self._staging: dict[str, torch.Tensor] = {}
        self.pending: dict[str, tuple[int, int, int, Future]] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shadowft-read") if prefetch else None

    def get(self, n: int) -> torch.Tensor:
        return self.work[:n]

    def result(self, work: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Where to put `inst + alpha * work` (shaped like `work`): the float32 sum is rounded to
        the output dtype in the same pass (torch computes in float32 and casts on store)."""
        if dtype == torch.float32:
            return work
        return self.stage("out", work.numel(), dtype).view(work.shape)

    def stage(self, slot: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        nbytes = n * torch.empty((), dtype=dtype).element_size()
        buf = self._staging.get(slot)
        if buf is None or buf.numel() < nbytes:
            buf = self._staging[slot] = torch.empty(max(nbytes, self.chunk * 4), dtype=torch.uint8)
        return buf[:nbytes].view(dtype)

    def settle(self, slot: str) -> None:
        """Finish (and drop) a prefetch still in flight for `slot`, so its buffers can be reused."""
        pend = self.pending.pop(slot, None)
        if pend is not None:
            pend[3].result()

    def close(self) -> None:
        for slot in list(self.pending):
            try:
                self.settle(slot)
            except Exception:  # the error that matters was raised where the chunk was used
                pass
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> Buffers:
        # One compute thread (this one) beside the reader thread. A chunk is ~1 MB, too small for
        # torch's intra-op threads to pay off, and on a busy or small machine their spinning
        # workers compete with the reader for cores: on 2 CPUs the default made a 1.3B graft take
        # 2-8x longer, and vary as much. Restored on exit (the setting is process-wide).
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()  # no read-ahead may still use a file the caller closes next
        finally:
            torch.set_num_threads(self._threads)


class Stream:
    """One input tensor read chunk by chunk; the next chunk is read ahead into the other buffer."""

    def __init__(self, ckpt: Checkpoint, name: str, bufs: Buffers, slot: str) -> None:
        self.ckpt, self.name, self.bufs, self.slot = ckpt, name, bufs, slot
        self.info = ckpt.tensors[name]
        bufs.settle(slot)  # a read-ahead left by the previous tensor of this role
        self._next = 0

    def numel(self) -> int:
        return self.info.numel

    def _buf(self, which: int, n: int) -> torch.Tensor:
        return self.bufs.stage(f"{self.slot}{which}", n, self.info.dtype)

    def chunk(self, s: int, e: int) -> torch.Tensor:
        pend = self.bufs.pending.pop(self.slot, None)
        if pend is not None and pend[:2] == (s, e):
            pend[3].result()
            which = pend[2]
            out = self._buf(which, e - s)
        else:
            if pend is not None:
                pend[3].result()
            which = self._next
            out = self.ckpt.read_into(self.name, s, self._buf(which, e - s))
        self._next = 1 - which
        if self.bufs.pool is not None and e < self.info.numel:
            ne = min(self.info.numel, e + self.bufs.chunk)
            fut = self.bufs.pool.submit(self.ckpt.read_into, self.name, e, self._buf(self._next, ne - e))
            self.bufs.pending[self.slot] = (e, ne, self._next, fut)
        return out


def check_finite(w: torch.Tensor, name: str, what: str) -> None:
    """Refuse NaN or Inf in an update chunk (one reduction: any of them makes the sum non-finite)."""
    if not math.isfinite(w.sum().item()):
        raise DivergedError(
            f"the {what} for tensor {name} contains NaN or Inf: the tuned model diverged",
            hint="re-train with a lower learning rate or gradient clipping; nothing was written",
        )


# (start, end, float32 update of elements [start, end) of the tensor, shaped as the method sees it)
UpdateChunks = Iterator[tuple[int, int, torch.Tensor]]


@dataclass
class TensorUpdate:
    """The update of one Instruct tensor, as its source provides it.

    `chunks(bufs)` yields the float32 update of elements [0, n) in order, in the shared work
    buffer; the method applies `scale` (the source's own factor, e.g. LoRA's alpha / r) on top of
    its alpha. Elements from `n` on (vocab rows the update lacks) are copied from Instruct.
    """

    n: int
    scale: float
    chunks: Callable[[Buffers], UpdateChunks]
    bytes_read: int = 0


def write_model(
    writer: ShardedWriter,
    instruct: Checkpoint,
    updates: dict[str, TensorUpdate | None],
    method: GraftMethod,
    progress: Progress | None = None,
) -> int:
    """Write every planned tensor: copy it (no update) or combine it with its update. -> bytes read"""
    bytes_read = 0
    with Buffers() as bufs:
        for i, shard in enumerate(writer.shards):
            with writer.open_shard(i):
                for t in shard:
                    upd = updates[t.name]
                    bytes_read += instruct.tensors[t.name].nbytes
                    if upd is None:
                        writer.copy_range(t.name, *instruct.byte_range(t.name))
                    else:
                        _combine_tensor(partial(writer.write, t.name), instruct, t.name, upd, method, bufs)
                        bytes_read += upd.bytes_read
                    if progress:
                        progress(t.name, t.nbytes)
    return bytes_read


def _combine_tensor(
    emit: Emit, instruct: Checkpoint, name: str, upd: TensorUpdate, method: GraftMethod, bufs: Buffers
) -> None:
    inst = Stream(instruct, name, bufs, "instruct")
    dtype = inst.info.dtype
    for s, e, w in upd.chunks(bufs):
        emit(method.combine(name, inst.chunk(s, e).view(w.shape), w, upd.scale, bufs.result(w, dtype)))
    for s in range(upd.n, inst.numel(), bufs.chunk):
        emit(inst.chunk(s, min(inst.numel(), s + bufs.chunk)))
