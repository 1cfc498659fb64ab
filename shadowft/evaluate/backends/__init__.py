"""Evaluation backends by name (`eval.backend`). Add one: a module here + a line in `BACKENDS`."""

from __future__ import annotations

from shadowft.evaluate.backends.base import EvalBackend, LoadedModel
from shadowft.evaluate.backends.hf import HFBackend
from shadowft.registry import lookup

BACKENDS: dict[str, type[EvalBackend]] = {"hf": HFBackend}
DEFAULT_BACKEND = "hf"


def get_backend(name: str = DEFAULT_BACKEND) -> EvalBackend:
    """A new instance of the evaluation backend called `name`."""
    return lookup(BACKENDS, name, "evaluation backend")()


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "EvalBackend", "LoadedModel", "get_backend"]
