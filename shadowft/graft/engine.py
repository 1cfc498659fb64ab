"""The streaming engine every graft method and update source runs on.

One loop writes the output in the planned shard layout (`checkpoint.ShardedWriter`): a tensor
without an update is copied by the kernel (`copy_file_range`); a tensor with one is computed
chunk by chunk: the update source fills a float32 work buffer, the method combines it with the
Instruct chunk, and the result is rounded to Instruct's dtype into an output buffer.

Three threads share the work of a chunk, so a 2-core machine is busy on both cores: a reader
thread fills the next chunk of each input stream (positioned reads into reused staging buffers),
this thread converts and combines, and a writer thread checks and appends the finished chunks
(`WriteBehind`). Torch ops and file reads and writes release the GIL. Every operand is converted
to float32 once, into a preallocated buffer, before the arithmetic: torch's mixed-dtype ops
(float32 with bfloat16) allocate a float32 temporary per call, whose fresh pages cost more than
the arithmetic. Anonymous memory stays at a few chunk buffers whatever the model's size.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from shadowft.checkpoint import Checkpoint, ShardedWriter
from shadowft.errors import ShadowFTError
from shadowft.graft.validate import check_result_finite
from shadowft.threads import thread_limit

if TYPE_CHECKING:
    from shadowft.graft.methods.base import GraftMethod

# float32 elements per work buffer (2 MB): a chunk's operands stay in the CPU's caches between the
# passes of convert, subtract, add and round, and the per-chunk Python work (~100 us) is a small
# share. On the benchmark's 1.3B trio, 2-core machine: 2.2-2.6 s in-process against 2.7-3.1 s at 1 MB.
CHUNK = 1 << 19
# Output buffers a chunk can wait in for the writer thread: enough to ride out a slow write.
WRITE_DEPTH = 4
# dtypes whose values float32 holds exactly: converted once, then combined in float32 alone
EXACT_IN_FLOAT32 = (torch.float32, torch.bfloat16, torch.float16)
Progress = Callable[[str, int], None]  # (tensor name, bytes done for it)
Emit = Callable[[torch.Tensor], None]


class DivergedError(ShadowFTError):
    """The update holds NaN or Inf: the tuned model diverged."""


@contextmanager
def one_compute_thread() -> Iterator[None]:
    """Run torch's arithmetic on the calling thread only, restoring the setting after.

    A chunk is ~1 MB, too small for torch's intra-op threads to pay off, and on a busy or small
    machine their spinning workers compete with the reader and writer threads for cores: on 2 CPUs
    the default made a 1.3B graft take 2-8x longer, and the graft's sampled pair check 0.4-11 s
    instead of 0.1 s. `shadowft.threads.thread_limit` sets it and restores it after."""
    with thread_limit(1):
        yield


class Buffers:
    """Preallocated work buffers, reused for every tensor: one float32 accumulator, two staging
    buffers per input stream (double buffering) and one float32 copy of each, and one reader
    thread that fills the next chunk of each stream while the current one is computed (positioned
    reads release the GIL). Used as a context manager, it also runs the arithmetic on one thread
    per role (see `one_compute_thread`)."""

    def __init__(self, chunk: int = CHUNK, prefetch: bool = True) -> None:
        self.chunk = chunk
        self.work = torch.empty(chunk, dtype=torch.float32)
        self._staging: dict[str, torch.Tensor] = {}
        self._views: dict[tuple[str, int, torch.dtype], torch.Tensor] = {}  # a view costs ~10 us: made once
        self.pending: dict[str, tuple[int, int, int, Future]] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shadowft-read") if prefetch else None
        self._threads: Any = None

    def get(self, n: int) -> torch.Tensor:
        return self.work[:n]

    def result(self, work: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Where to put `inst + alpha * work` (shaped like `work`) when it is computed from Instruct
        in its own dtype: torch computes in float32 and rounds to the output dtype on store."""
        if dtype == torch.float32:
            return work
        return self.stage("out", work.numel(), dtype).view(work.shape)

    def stage(self, slot: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        view = self._views.get((slot, n, dtype))
        if view is not None:
            return view
        nbytes = n * dtype.itemsize
        buf = self._staging.get(slot)
        if buf is None or buf.numel() < nbytes:
            buf = self._staging[slot] = torch.empty(max(nbytes, self.chunk * 4), dtype=torch.uint8)
            self._views = {k: v for k, v in self._views.items() if k[0] != slot}
        view = self._views[(slot, n, dtype)] = buf[:nbytes].view(dtype)
        return view

    def as_float(self, slot: str, t: torch.Tensor) -> torch.Tensor:
        """`t` in float32 (converted into `slot`'s float32 buffer), when that is exact; else `t`.

        An op of a float32 tensor with a bfloat16 one computes in float32 as this does, but
        through a temporary it allocates per call."""
        if t.dtype == torch.float32 or t.dtype not in EXACT_IN_FLOAT32:
            return t
        out = self.stage(slot + ":f32", t.numel(), torch.float32)
        return out.copy_(t) if t.dim() == 1 else out.view(t.shape).copy_(t)

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
        self._threads = one_compute_thread()
        self._threads.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()  # no read-ahead may still use a file the caller closes next
        finally:
            self._threads.__exit__(None, None, None)


class Stream:
    """One input tensor read chunk by chunk; the next chunk is read ahead into the other buffer."""

    def __init__(self, ckpt: Checkpoint, name: str, bufs: Buffers, slot: str) -> None:
        self.ckpt, self.name, self.bufs, self.slot = ckpt, name, bufs, slot
        self.info = ckpt.tensors[name]
        bufs.settle(slot)  # a read-ahead left by the previous tensor of this role
        self._next = 0
        self._slots = (slot + "0", slot + "1")

    def numel(self) -> int:
        return self.info.numel

    def _buf(self, which: int, n: int) -> torch.Tensor:
        return self.bufs.stage(self._slots[which], n, self.info.dtype)

    def chunk(self, s: int, e: int) -> torch.Tensor:
        """Elements [s, e) in the tensor's dtype (valid until the next call)."""
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

    def float_chunk(self, s: int, e: int) -> torch.Tensor:
        """Elements [s, e) in float32 when that holds them exactly (16- and 32-bit floats), else in
        the tensor's dtype: ready for float32 arithmetic without a temporary per op."""
        return self.bufs.as_float(self.slot, self.chunk(s, e))


class WriteBehind:
    """Appends finished chunks to the output on a writer thread, in order, while this thread
    computes the next ones. A chunk waits in one of `depth` reused output buffers (`buffer`); when
    all are queued, `buffer` waits for the writer, which keeps memory bounded.

    Used as a context manager inside the open shard: on exit every queued write is done (or, when
    the body raised, the rest is dropped) before the shard is checked and closed. An error of the
    writer thread (a full disk, a non-finite result) is raised here, at the next `submit` or exit.
    """

    def __init__(self, nbytes: int, depth: int = WRITE_DEPTH) -> None:
        # each buffer with the views made of it (a view costs ~10 us, a chunk's arithmetic ~100)
        self._free: queue.SimpleQueue[tuple[torch.Tensor, dict]] = queue.SimpleQueue()
        for _ in range(depth):
            self._free.put((torch.empty(nbytes, dtype=torch.uint8), {}))
        self._jobs: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._cancel = False
        self._lent: tuple[torch.Tensor, dict] | None = None
        self._thread = threading.Thread(target=self._run, name="shadowft-write", daemon=True)

    def buffer(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """A free output buffer for `n` elements of `dtype` (waits while every buffer is queued)."""
        self._raise()
        raw, views = self._lent = self._free.get()
        view = views.get((n, dtype))
        if view is None:
            nbytes = n * dtype.itemsize
            if raw.numel() < nbytes:  # a chunk larger than planned (e.g. one very long LoRA row)
                raw, views = self._lent = (torch.empty(nbytes, dtype=torch.uint8), {})
            view = views[(n, dtype)] = raw[:nbytes].view(dtype)
        return view

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the writer thread after every earlier job; the buffer last taken
        with `buffer` (which the job writes) is free again once it has run."""
        self._raise()
        self._jobs.put((fn, args, self._lent))
        self._lent = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, buf = job
            try:
                if self._error is None and not self._cancel:
                    fn(*args)
            except BaseException as exc:  # raised on the computing thread
                self._error = exc
            finally:
                if buf is not None:
                    self._free.put(buf)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> WriteBehind:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._cancel = exc_type is not None
        self._jobs.put(None)
        self._thread.join()
        if exc_type is None:
            self._raise()


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
            with writer.open_shard(i), WriteBehind(bufs.chunk * 4) as out:
                for t in shard:
                    upd = updates[t.name]
                    bytes_read += instruct.tensors[t.name].nbytes
                    if upd is None:
                        out.submit(writer.copy_range, t.name, *instruct.byte_range(t.name))
                    else:
                        _combine_tensor(out, writer, instruct, t.name, upd, method, bufs)
                        bytes_read += upd.bytes_read
                    if progress:
                        progress(t.name, t.nbytes)
    return bytes_read


def _write_checked(writer: ShardedWriter, name: str, out: torch.Tensor) -> None:
    writer.write(name, check_result_finite(out, name))  # Inf from rounding to Instruct's dtype (e.g. float16)


def _combine_tensor(
    out: WriteBehind,
    writer: ShardedWriter,
    instruct: Checkpoint,
    name: str,
    upd: TensorUpdate,
    method: GraftMethod,
    bufs: Buffers,
) -> None:
    """Instruct (+) update, chunk by chunk: for 16- and 32-bit float models the Instruct chunk goes
    to the method in float32 and the method combines in place into the update's buffer (what it
    would compute into an output of Instruct's dtype, which torch also does in float32); the result
    is rounded into an output buffer and written behind. Other dtypes keep Instruct's own. A method
    that needs the whole update first (TIES' threshold) streams it in `prepare`, before Instruct."""
    method.prepare(name, upd.n, lambda: upd.chunks(bufs))  # a method's passes over the whole update
    inst = Stream(instruct, name, bufs, "instruct")
    dtype = inst.info.dtype
    exact = dtype in EXACT_IN_FLOAT32
    for s, e, w in upd.chunks(bufs):
        x = inst.float_chunk(s, e) if exact else inst.chunk(s, e)
        x = x if w.dim() == 1 else x.view(w.shape)
        res = method.combine(name, x, w, upd.scale, w if exact else bufs.result(w, dtype), s)
        o = out.buffer(w.numel(), dtype)
        o.copy_(res if res.dim() == 1 else res.reshape(-1))  # rounds to Instruct's dtype
        out.submit(_write_checked, writer, name, o)
    for s in range(upd.n, inst.numel(), bufs.chunk):
        e = min(inst.numel(), s + bufs.chunk)
        o = out.buffer(e - s, dtype)
        o.copy_(inst.chunk(s, e))
        out.submit(writer.write, name, o)
