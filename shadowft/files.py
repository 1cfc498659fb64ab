"""Atomic file writes: a reader sees the old file or the new one, never half of one.

One implementation for every JSON the project writes beside a running job (manifests, loss curves,
results), because a crash mid-write must not leave a file that later fails to parse.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write `text` to a unique temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path | str, data: Any) -> None:
    """`data` as indented JSON (non-JSON values such as paths as their text), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
