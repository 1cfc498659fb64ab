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
import math
import mmap
import os
import re
import shutil
import stat
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from shadowft.errors import CheckpointError

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
_ITEMSIZE = {k: torch.empty((), dtype=v).element_size() for k, v in DTYPES.items()}
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


def _refuse_file(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors file ({problem})",
        hint="the file is corrupt or was not fully downloaded; download or copy it again",
    )


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object_pairs_hook: a key given twice would silently hide one of its entries."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _read_header(path: Path) -> tuple[dict, int, int]:
    """Read a safetensors header; return (parsed JSON, data start, file size).

    Opened non-blocking and checked to be a regular file first, so a FIFO or device named
    `*.safetensors` is refused instead of blocking the open or the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CheckpointError(
            f"{path} cannot be opened ({exc.strerror or exc})",
            hint="check that the file exists and is readable",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(
                f"{path} is not a regular file (a directory, FIFO or device named like a shard)",
                hint="a model dir holds its weights as plain .safetensors files; remove or rename this one",
            )
        size = st.st_size
        raw = os.pread(fd, 8, 0)
        if len(raw) < 8:
            raise _refuse_file(path, "file shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise _refuse_file(path, f"header length {n} does not fit in a file of {size} bytes")
        blob = b""
        while len(blob) < n:
            part = os.pread(fd, n - len(blob), 8 + len(blob))
            if not part:
                raise _refuse_file(path, "the file ended inside its header")
            blob += part
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_unique_keys)
    except OSError as exc:
        raise _refuse_file(path, exc.strerror or str(exc)) from None
    except RecursionError:
        raise _refuse_file(path, "its header nests too deeply to be a safetensors header") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _refuse_file(path, str(exc)) from None
    finally:
        os.close(fd)
    return header, 8 + n, size


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _header_tensors(path: Path, header: object, start: int, size: int) -> tuple[dict[str, TensorInfo], dict]:
    """Validate a parsed header once per file; -> ({name: TensorInfo} in file order, metadata).

    The rules are the safetensors format's own (its library refuses the same files): a JSON object
    of objects, each with a known dtype, a shape of non-negative integers and `data_offsets`
    [begin, end] whose length is numel x itemsize; sorted by offset, the tensors tile the data
    section exactly (no overlap, no gap, nothing after the last). A header that breaks one would
    otherwise be read as wrong tensors without an error.
    """
    if not isinstance(header, dict):
        raise _refuse_file(path, f"its header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise _refuse_file(path, "its __metadata__ is not a JSON object of strings")
    spans: list[tuple[int, int, str]] = []
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue

        def bad(problem: str, name: str = name) -> CheckpointError:
            return CheckpointError(
                f"{path}: the header entry of tensor {name!r} {problem}",
                hint="the file is corrupt or was not written by a safetensors writer; download or copy it again",
            )

        if not isinstance(entry, dict):
            raise bad("is not a JSON object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise bad("has no dtype")
        if dtype not in DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name} has dtype {dtype}, which shadowft cannot do arithmetic on",
                hint="convert the checkpoint to bf16/fp16/fp32 safetensors first",
            )
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            raise bad(f"has shape {shape!r}, not a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise bad(f"has data_offsets {offsets!r}, not two non-negative integers")
        begin, end = offsets
        if end < begin:
            raise bad(f"has reversed data_offsets [{begin}, {end}]")
        need = math.prod(shape) * _ITEMSIZE[dtype]
        if end - begin != need:
            raise bad(f"spans {end - begin} bytes, but shape {shape} of {dtype} needs {need}")
        spans.append((begin, end, name))
        infos[name] = TensorInfo(name, path, start + begin, end - begin, DTYPES[dtype], tuple(shape))
    pos, prev, problem = 0, None, None
    for begin, end, name in sorted(spans):  # an overlap (two tensors on the same bytes) is named first
        if begin < pos:
            problem = f"the data of tensor {name!r} (bytes {begin}-{end}) overlaps tensor {prev!r}"
            break
        if begin > pos and problem is None:
            problem = f"the data of tensor {name!r} (bytes {begin}-{end}) starts {begin - pos} bytes after the previous one ends"
        pos, prev = max(pos, end), name
    if problem is not None:
        raise CheckpointError(
            f"{path}: {problem}",
            hint="the file is corrupt or was not written by a safetensors writer; download or copy it again",
        )
    if start + pos > size:
        raise CheckpointError(
            f"{path} is truncated: its header promises {start + pos} bytes, the file has {size}",
            hint="the file was not fully written or downloaded; fetch it again",
        )
    if start + pos < size:
        raise CheckpointError(
            f"{path} has {size - start - pos} bytes after its last tensor's data",
            hint="the file is corrupt (or two files were concatenated); download or copy it again",
        )
    return infos, meta or {}


class Checkpoint:
    """The safetensors weights of one HF model dir (or one .safetensors file), read lazily."""

    def __init__(self, path: str | os.PathLike, role: str = "model") -> None:
        self.path = Path(path)
        self.role = role
        self._index_map: dict[str, str] | None = None  # set by `_weight_files` when there is an index
        self.files = self._weight_files()
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, dict] = {}
        self._maps: dict[Path, mmap.mmap] = {}
        self._fds: dict[Path, int] = {}
        for file in self.files:  # each header is parsed and validated once, here
            infos, self.metadata[file.name] = _header_tensors(file, *_read_header(file))
            for name, info in infos.items():
                if name in self.tensors:
                    raise CheckpointError(f"{self.path}: tensor {name} appears in two shards")
                self.tensors[name] = info
        if self._index_map is not None:
            for name, fname in self._index_map.items():
                info = self.tensors.get(name)
                if info is None or info.file != self.path / fname:
                    raise CheckpointError(
                        f"{self.path}/{INDEX_NAME} maps {name} to {fname}, but that shard does not hold it",
                        hint="the index and the shards come from different saves; re-download the model",
                    )
        self.config = self._read_json("config.json")

    # -- discovery -------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        p = self.path
        try:
            mode = p.stat().st_mode
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise CheckpointError(
                    f"{self.role} {p} is a symlink loop", hint="point at the model directory itself"
                ) from None
            raise CheckpointError(
                f"{self.role} {p} does not exist" if exc.errno == errno.ENOENT else f"{self.role} {p}: {exc.strerror}",
                hint="pass a local model directory (hub ids must be downloaded first, e.g. `huggingface-cli download`)",
            ) from None
        if not stat.S_ISDIR(mode):
            if p.suffix != ".safetensors":
                raise _refuse_format(p, self.role)
            return [p]  # a file the user named: read wherever it is (`_read_header` refuses a non-regular one)
        index = p / INDEX_NAME
        if os.path.lexists(index):
            files = self._index_files(index)
        else:
            files = sorted(p.glob("*.safetensors"))
            if not files:
                others = sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)
                if others:
                    raise _refuse_format(others[0], self.role)
                raise CheckpointError(
                    f"{self.role} {p} holds no safetensors weights",
                    hint="point at a Hugging Face model directory with model.safetensors or a sharded index",
                )
        for f in files:
            check_inside(p, f)
        return files

    def _index_files(self, index: Path) -> list[Path]:
        self._index_map = read_index(index)
        names = sorted(set(self._index_map.values()))
        files = [shard_path(self.path, n, index) for n in names]
        missing = [n for n, f in zip(names, files) if not f.exists()]
        if missing:
            raise CheckpointError(
                f"{index} names shard(s) that are missing: {', '.join(missing)}",
                hint="the download is incomplete; fetch the missing shard(s) again",
            )
        return files

    def _read_json(self, name: str) -> dict:
        f = self.path / name if self.path.is_dir() else None
        if f is None or not os.path.lexists(f):
            return {}
        return read_json_object(f, f"{self.role} {name}")

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


def _read_small_file(path: Path, limit: int = MAX_HEADER) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (opened non-blocking: a FIFO is refused,
    not waited on)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"{st.st_size} bytes, more than the {limit} a metadata file may have")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold an object (config.json, an index, adapter_config.json, ...)."""
    try:
        data = json.loads(_read_small_file(path).decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(
            f"{what} {path} cannot be read ({exc.strerror or exc})",
            hint="it must be a readable regular file; restore it from the original model",
        ) from None
    except RecursionError:
        raise CheckpointError(
            f"{what} {path} is not valid JSON (it nests too deeply)", hint="restore it from the original model"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{what} {path} is not valid JSON ({exc})",
            hint="the file is corrupt or truncated; restore it from the original model",
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{what} {path} holds a JSON {type(data).__name__}, not an object",
            hint="the file is corrupt or is not what its name says; restore it from the original model",
        )
    return data


def read_index(index: Path) -> dict[str, str]:
    """The `weight_map` {tensor name: shard file} of a sharded model's index, validated."""
    weight_map = read_json_object(index, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{index} is not a valid safetensors index (its weight_map must map tensor names to shard file names)",
            hint="the index is corrupt; re-download the model",
        )
    return weight_map


def shard_path(model_dir: Path, name: str, index: Path) -> Path:
    """The shard an index names, which must be a relative path inside the model dir (no absolute
    path, no `..`): an index does not get to point shadowft at any file on the machine."""
    rel = PurePosixPath(name)
    if not name or "\x00" in name or rel.is_absolute() or ".." in rel.parts:
        raise CheckpointError(
            f"{index} names the shard {name!r}, which is not a file inside the model dir {model_dir}",
            hint="an index names its shards relative to its own dir; this one is corrupt or crafted: re-download the model",
        )
    return model_dir / rel


def _hub_blob(real: Path) -> bool:
    """A file in a Hugging Face hub cache's blob store (`models--org--name/blobs/<hash>`), where the
    hub's snapshot dirs (and old `--local-dir` downloads) link their weights."""
    return real.parent.name == "blobs" and real.parent.parent.name.startswith("models--")


def check_inside(model_dir: Path, file: Path) -> None:
    """Refuse a weight file of `model_dir` that, after symlinks, lies outside it.

    Policy: a shard may be a symlink, but its target must be inside the model dir (also after
    resolving the dir's own links) or a blob of a Hugging Face hub cache. A crafted repo or index
    cannot make shadowft read (or report on) another file of the machine.
    """
    try:
        real, root = file.resolve(strict=True), model_dir.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # a symlink loop, a dangling link
        raise CheckpointError(
            f"{file} cannot be resolved ({getattr(exc, 'strerror', None) or exc})",
            hint="the shard is a broken symlink or a symlink loop; copy the real file into the model dir",
        ) from None
    if root in real.parents or _hub_blob(real):
        return
    raise CheckpointError(
        f"{file} resolves to {real}, outside the model dir {model_dir}",
        hint="shadowft reads only weights inside the model dir (or blobs of a Hugging Face hub cache); "
        "copy the file into the dir (e.g. `cp --dereference`)",
    )


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
