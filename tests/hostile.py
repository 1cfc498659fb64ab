"""Helpers for hostile-input tests: rewrite a safetensors header, run the CLI in-process."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path


def split_safetensors(file: Path) -> tuple[dict, bytes]:
    """(parsed header, data section) of a well-formed safetensors file."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(file: Path, header: object | bytes, data: bytes) -> None:
    """Write `header` (a JSON value, or raw header bytes) and `data` as a safetensors file."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def edit_header(file: Path, edit: Callable[[dict], object]) -> None:
    """Rewrite `file`'s header with `edit(header)` (which may modify it in place and return None)."""
    header, data = split_safetensors(file)
    new = edit(header)
    write_safetensors(file, header if new is None else new, data)


def first_tensor(header: dict, contains: str = "") -> str:
    """The name of the first tensor (in data order) whose name contains `contains`."""
    names = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__" and contains in k)
    return names[0][1]


def run_cli(*args: object) -> tuple[int, str]:
    """`shadowft ARGS` in this process: (exit code, stderr). A Python exception other than the CLI's
    own exit propagates, so a traceback fails the calling test."""
    from shadowft.cli import main

    argv, err = sys.argv, io.StringIO()
    sys.argv = ["shadowft", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, err.getvalue()
