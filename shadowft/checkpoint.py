"""Streaming safetensors I/O over HF model directories.

Reading: the headers of every shard are parsed up front (names, dtypes, shapes, offsets, with
truncation and index checks), and tensors are returned as zero-copy views on memory-mapped
files, so reading a tensor costs no anonymous memory. Writing: the output layout (shards and
headers) is planned from the tensor list before any data is produced; each shard is a
preallocated, memory-mapped file that callers fill tensor by tensor. Everything is written into
a temporary directory beside the destination and published by one rename when complete.
"""

from __future__ import annotations

import errno
import io
import json
import mmap
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from shadowft.errors import CheckpointError, OutputExistsError, as_disk_full

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES, ".gguf", ".h5", ".msgpack")

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, dtype and shape."""

    name: str
    file: Path
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def _read_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header; return (header, data start). Checks the file is complete."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in a file of {size} bytes")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc})",
            hint="the file is corrupt or was not fully downloaded; download or copy it again",
        ) from None
    start = 8 + n
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if start + end > size:
        raise CheckpointError(
            f"{path} is truncated: its header promises {start + end} bytes, the file has {size}",
            hint="the file was not fully written or downloaded; fetch it again",
        )
    return header, start


class Checkpoint:
    """The safetensors weights of one HF model dir (or one .safetensors file), read lazily."""

    def __init__(self, path: str | os.PathLike, role: str = "model") -> None:
        self.path = Path(path)
        self.role = role
        self.files = self._weight_files()
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, dict] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        self._fds: dict[Path, int] = {}
        self._index_map = self._read_index()
        for file in self.files:
            header, start = _read_header(file)
            self.metadata[file.name] = header.pop("__metadata__", None) or {}
            for name, meta in header.items():
                if meta["dtype"] not in DTYPES:
                    raise CheckpointError(
                        f"{file}: tensor {name} has dtype {meta['dtype']}, which shadowft cannot do arithmetic on",
                        hint="convert the checkpoint to bf16/fp16/fp32 safetensors first",
                    )
                if name in self.tensors:
                    raise CheckpointError(f"{self.path}: tensor {name} appears in two shards")
                b, e = meta["data_offsets"]
                self.tensors[name] = TensorInfo(
                    name, file, start + b, e - b, DTYPES[meta["dtype"]], tuple(meta["shape"])
                )
        if self._index_map is not None:
            for name, fname in self._index_map.items():
                info = self.tensors.get(name)
                if info is None or info.file.name != fname:
                    raise CheckpointError(
                        f"{self.path}/{INDEX_NAME} maps {name} to {fname}, but that shard does not hold it",
                        hint="the index and the shards come from different saves; re-download the model",
                    )
        self.config = self._read_json("config.json")

    # -- discovery -------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        p = self.path
        if p.is_file():
            if p.suffix != ".safetensors":
                raise _refuse_format(p, self.role)
            return [p]
        if not p.is_dir():
            raise CheckpointError(
                f"{self.role} {p} does not exist",
                hint="pass a local model directory (hub ids must be downloaded first, e.g. `huggingface-cli download`)",
            )
        index = p / INDEX_NAME
        if index.exists():
            return self._index_files(index)
        single = sorted(p.glob("*.safetensors"))
        if single:
            return single
        others = sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)
        if others:
            raise _refuse_format(others[0], self.role)
        raise CheckpointError(
            f"{self.role} {p} holds no safetensors weights",
            hint="point at a Hugging Face model directory with model.safetensors or a sharded index",
        )

    def _index_files(self, index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc})") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (self.path / f).is_file()]
        if missing:
            raise CheckpointError(
                f"{index} names shard(s) that are missing: {', '.join(missing)}",
                hint="the download is incomplete; fetch the missing shard(s) again",
            )
        return [self.path / f for f in files]

    def _read_index(self) -> dict[str, str] | None:
        index = self.path / INDEX_NAME if self.path.is_dir() else None
        if index is None or not index.exists():
            return None
        return json.loads(index.read_text())["weight_map"]

    def _read_json(self, name: str) -> dict:
        f = self.path / name if self.path.is_dir() else None
        if f is None or not f.exists():
            return {}
        return json.loads(f.read_text())

    # -- reading ---------------------------------------------------------------------------
    def _map(self, file: Path) -> mmap.mmap:
        mm = self._maps.get(file)
        if mm is None:
            with open(file, "rb") as f:
                # ACCESS_COPY gives a writable (private) mapping so torch needs no copy; we never write.
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self._maps[file] = mm
        return mm

    def view(self, name: str) -> torch.Tensor:
        """A zero-copy, flat view of tensor `name` on the memory-mapped file."""
        info = self.tensors[name]
        if info.nbytes == 0:
            return torch.empty(0, dtype=info.dtype)
        raw = torch.frombuffer(self._map(info.file), dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        return raw.view(info.dtype)

    def _fd(self, file: Path) -> int:
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        return fd

    def read_into(self, name: str, start: int, out: torch.Tensor) -> torch.Tensor:
        """Read elements [start, start + out.numel()) of tensor `name` into `out` (same dtype).

        A positioned read into a reused buffer: unlike touching a fresh memory map, it costs no
        page faults, which dominate the time of a streaming pass over a large checkpoint.
        """
        info = self.tensors[name]
        size = out.element_size()
        nbytes = out.numel() * size
        raw = out.view(torch.uint8).numpy()
        got = os.preadv(self._fd(info.file), [raw], info.offset + start * size)  # type: ignore[list-item]
        if got != nbytes:
            raise CheckpointError(f"{info.file} ended while reading {name} (the file changed or is truncated)")
        return out

    def byte_range(self, name: str) -> tuple[int, int, int]:
        """(file descriptor, offset, length) of tensor `name`'s bytes, for kernel-side copies."""
        info = self.tensors[name]
        return self._fd(info.file), info.offset, info.nbytes

    def tensor(self, name: str) -> torch.Tensor:
        """A tensor in its shape (still a view on the mapped file; clone it to keep it)."""
        return self.view(name).view(self.tensors[name].shape)

    def close(self) -> None:
        for mm in self._maps.values():
            try:
                mm.close()
            except BufferError:  # a view still references it; the GC will unmap it
                pass
        self._maps.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))


def _refuse_format(file: Path, role: str) -> CheckpointError:
    if file.suffix in PICKLE_SUFFIXES:
        return CheckpointError(
            f"{role} weights {file} are pickled ({file.suffix}); shadowft never unpickles weights",
            hint=f"convert them to safetensors: `shadowft convert {file.parent} OUT_DIR` "
            "(loads with torch.load(weights_only=True)) or save_pretrained(safe_serialization=True)",
        )
    return CheckpointError(
        f"{role} weights {file} are in an unsupported format ({file.suffix})",
        hint="shadowft reads Hugging Face safetensors model directories",
    )


# -- writing ---------------------------------------------------------------------------------
def parse_size(size: str | int) -> int:
    """'5GB', '500MB', '20KB', '1GiB' or an int -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*", size, flags=re.IGNORECASE)
    if not m:
        raise CheckpointError(f"cannot read the size {size!r}", hint="write it like 5GB, 500MB or 2GiB")
    num, unit = float(m.group(1)), m.group(2).upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    return int(num * base**power)


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        n = self.element_size
        for s in self.shape:
            n *= s
        return n


class ShardedWriter:
    """Writes a planned list of tensors, in order, as safetensors shards (+ index when several).

    The layout (which tensor goes to which shard, every header) is fixed from the plan before any
    data exists, so data can be appended sequentially: `open_shard(i)` writes the header, then
    `write(name, chunk)` appends each tensor's bytes, chunk by chunk, in plan order. Chunks of
    another dtype are converted through one reused staging buffer. Plain sequential writes cost
    no page faults on the output and no anonymous memory beyond the staging buffer.
    """

    def __init__(
        self,
        out_dir: Path,
        tensors: list[OutTensor],
        max_shard_size: str | int = "5GB",
        metadata: dict[str, str] | None = None,
        prefix: str = "model",
    ) -> None:
        self.out_dir = Path(out_dir)
        self.metadata = {"format": "pt", **(metadata or {})}
        limit = parse_size(max_shard_size)
        shards: list[list[OutTensor]] = [[]]
        used = 0
        for t in tensors:
            if shards[-1] and used + t.nbytes > limit:
                shards.append([])
                used = 0
            shards[-1].append(t)
            used += t.nbytes
        self.shards = shards
        n = len(shards)
        self.names = (
            [f"{prefix}.safetensors"] if n == 1 else [f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._file: io.FileIO | None = None
        self._pending: list[OutTensor] = []
        self._left = 0
        self._stage = torch.empty(0, dtype=torch.uint8)

    @contextmanager
    def open_shard(self, i: int):
        """Create shard `i` and write its header; on exit check that every tensor was written."""
        header: dict = {"__metadata__": self.metadata}
        pos = 0
        for t in self.shards[i]:
            header[t.name] = {
                "dtype": DTYPE_NAMES[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [pos, pos + t.nbytes],
            }
            pos += t.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(self.out_dir / self.names[i], "wb", buffering=0) as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            self._file = f
            self._pending = list(self.shards[i])
            self._left = self._pending[0].nbytes if self._pending else 0
            self._skip_empty()
            try:
                yield self
                if self._pending:
                    raise RuntimeError(f"shard {self.names[i]}: tensor {self._pending[0].name} was not (fully) written")
            finally:
                self._file = None

    def _skip_empty(self) -> None:
        while self._pending and self._left == 0:
            self._pending.pop(0)
            self._left = self._pending[0].nbytes if self._pending else 0

    def write(self, name: str, data: torch.Tensor) -> None:
        """Append the next chunk of tensor `name` (flat; converted to the planned dtype)."""
        if not self._pending or self._pending[0].name != name:
            expected = self._pending[0].name if self._pending else "nothing"
            raise RuntimeError(f"write order: got {name}, expected {expected}")
        t = self._pending[0]
        if data.dtype != t.dtype:
            nbytes = data.numel() * t.element_size
            if self._stage.numel() < nbytes:
                self._stage = torch.empty(nbytes, dtype=torch.uint8)
            staged = self._stage[:nbytes].view(t.dtype)
            staged.copy_(data.reshape(-1))
            data = staged
        raw = data.reshape(-1).view(torch.uint8)
        if raw.numel() > self._left:
            raise RuntimeError(f"tensor {name}: {raw.numel()} bytes written past its size")
        _write_all(self._file, raw.numpy())
        self._left -= raw.numel()
        self._skip_empty()

    def copy_range(self, name: str, src_fd: int, offset: int, nbytes: int) -> None:
        """Append tensor `name` whole, copied by the kernel from another file (no user-space copy)."""
        if not self._pending or self._pending[0].name != name or self._left != nbytes:
            raise RuntimeError(f"copy_range: {name} is not the next tensor or has another size")
        assert self._file is not None, "copy_range before a shard is open"
        out_fd = self._file.fileno()
        done = 0
        try:
            while done < nbytes:
                n = os.copy_file_range(src_fd, out_fd, nbytes - done, offset + done)
                if n == 0:
                    raise CheckpointError(f"input ended while copying {name} (the file changed or is truncated)")
                done += n
        except OSError as exc:  # filesystems without copy_file_range: fall back to read + write
            if done or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            while done < nbytes:
                block = os.pread(src_fd, min(1 << 24, nbytes - done), offset + done)
                if not block:
                    raise CheckpointError(f"input ended while copying {name}") from None
                _write_all(self._file, block)
                done += len(block)
        self._left -= nbytes
        self._skip_empty()

    def write_index(self) -> None:
        if len(self.names) == 1:
            return
        weight_map = {t.name: fname for fname, shard in zip(self.names, self.shards) for t in shard}
        total = sum(t.nbytes for shard in self.shards for t in shard)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _write_all(f, data) -> None:
    """An unbuffered write may be partial; loop until every byte is out (or raise, e.g. ENOSPC)."""
    view = memoryview(data).cast("B")
    while view:
        n = f.write(view)
        view = view[n:]


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output dir unless `overwrite` (checked before any expensive work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is a file", hint="choose another --out path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"output directory {out} already exists and is not empty",
            hint="choose another --out, or pass --overwrite to replace it",
        )


_HOST = re.sub(r"[^A-Za-z0-9]", "", os.uname().nodename)[:32] or "host"


def _remove_dead_temp_dirs(out: Path) -> list[Path]:
    """Delete temp dirs beside `out` left by a writer on this host that was killed (SIGKILL, power
    loss): their process no longer exists. A live writer's dir, or another host's, is left alone."""
    removed = []
    pattern = re.compile(re.escape(f".{out.name}.tmp-{_HOST}-") + r"(\d+)-")
    for d in out.parent.glob(f".{out.name}.tmp-{_HOST}-*"):
        m = pattern.match(d.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter before Python 3.13's os)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary dir beside `out`; on success rename it to `out`, on failure delete it.

    A reader never sees a half-written `out`: it either does not exist or is complete.
    """
    out = Path(out).absolute()
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temp_dirs(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{_HOST}-{os.getpid()}-", dir=out.parent))
    # mkdtemp makes the dir 0700 and the rename keeps it: give it the mode a new dir gets under the umask
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = as_disk_full(exc, str(out))
        if full is not None:
            raise full from None
        raise
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "old")
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


NON_WEIGHT_SKIP = re.compile(
    r"(\.safetensors|\.bin|\.pt|\.pth|\.ckpt|\.gguf|\.h5|\.msgpack|safetensors\.index\.json|bin\.index\.json)$"
)


def copy_model_side_files(src: Path, dst: Path) -> list[str]:
    """Copy config, tokenizer, chat template, generation config etc. (everything but weights)."""
    copied: list[str] = []
    src = Path(src)
    if not src.is_dir():
        return copied
    for f in sorted(src.iterdir()):
        if f.name.startswith(".") or NON_WEIGHT_SKIP.search(f.name):
            continue
        if f.is_file():  # subdirectories (checkpoints, caches) are not part of a model
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied
