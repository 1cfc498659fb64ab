"""User-facing errors: a message that says what is wrong and a hint that says how to fix it."""

from __future__ import annotations


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
