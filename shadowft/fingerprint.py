"""Fast fingerprints of user inputs (model dirs, dataset files) for cache keys and provenance.

Small files (configs, tokenizers, datasets) are hashed by content; weight files and other large
files by name, size, modification time (as `make` does) and 16 sampled 4 KiB blocks, so an unchanged multi-GB model dir
fingerprints in milliseconds while any rewrite of a shard changes the fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CONTENT_HASH_LIMIT = 64 * 1024 * 1024  # bytes; files above this are fingerprinted by stat
STAT_ONLY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SAMPLES, SAMPLE_BYTES = 16, 4096  # blocks read from a file fingerprinted by stat (spread over the file)


def _file_digest(path: Path, h: hashlib._Hash, content_limit: int) -> None:
    st = path.stat()
    h.update(f"{st.st_size}\0".encode())
    if st.st_size <= content_limit and path.suffix not in STAT_ONLY_SUFFIXES:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        h.update(f"mtime:{st.st_mtime_ns}\0".encode())
        # Size and mtime alone are not enough: files copied from one source (a shipped model family,
        # an unpacked archive) share both while their weights differ, and two such models would get
        # one fingerprint (one cache key). A few sampled blocks tell them apart in microseconds.
        with open(path, "rb") as f:
            for i in range(SAMPLES):
                f.seek(st.st_size * i // SAMPLES)
                h.update(f.read(SAMPLE_BYTES))


def fingerprint_path(path: str | os.PathLike, content_limit: int = CONTENT_HASH_LIMIT) -> str:
    """A sha256 hex digest identifying the file or directory tree at `path` (hidden files skipped)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        h.update(b"file\0")
        _file_digest(path, h, content_limit)
        return h.hexdigest()
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    h.update(b"dir\0")
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = Path(root) / name
            h.update(str(full.relative_to(path)).encode() + b"\0")
            _file_digest(full, h, content_limit)
    return h.hexdigest()


def fingerprint_model_dir(path: str | os.PathLike) -> str:
    """Fingerprint of a model directory (alias kept for readability at call sites)."""
    return fingerprint_path(path)
