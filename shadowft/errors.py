"""User-facing errors: a message that says what is wrong and a hint that says how to fix it."""

from __future__ import annotations

import errno


class ShadowFTError(Exception):
    """An error caused by the user's input or environment (shown without a traceback)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class PairError(ShadowFTError):
    """Base and Instruct (or an adapter / delta) cannot be combined."""


class CheckpointError(ShadowFTError):
    """A model directory or safetensors file is missing, corrupt or in a refused format."""


class OutputExistsError(ShadowFTError):
    """The output directory exists and is not empty."""


class DiskFullError(ShadowFTError):
    """A write failed for lack of space (or a file size / quota limit)."""

    reason: str = "no space left on the device"


_NO_SPACE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded",
}


def as_disk_full(exc: BaseException, where: str) -> DiskFullError | None:
    """A `DiskFullError` naming `where` for an OSError of a full disk, quota or size limit, else None."""
    if isinstance(exc, DiskFullError):  # raised deeper down: name the outer thing being written
        reason = exc.reason
    elif isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        reason = _NO_SPACE[exc.errno]
    else:
        return None
    err = DiskFullError(
        f"{reason} while writing {where}; nothing was published",
        hint="free some space (the store's `shadowft store verify --remove` deletes incomplete builds) "
        "or point SHADOWFT_HOME / --out at a bigger disk, then run the same command again",
    )
    err.reason = reason
    return err


class EvalError(ShadowFTError):
    """A suite cannot be resolved or run."""
