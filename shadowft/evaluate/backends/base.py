"""The evaluation backend seam: how generations and log-likelihoods are produced.

A backend turns a model directory into an lm-eval `LM` object. Everything around it (suites, task
building, the run, the results schema) is shared, so every backend writes the same `results.json`.
A backend is built with its own settings (`eval.vllm` for vllm; none for hf), checks in `preflight`
what it needs (packages, GPUs) before any stage runs, and says in `settings()` what is recorded
with the results and keyed in the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

#: Qwen3's end-of-thinking tag: lm-eval drops the reasoning before it when thinking is on.
THINK_END_TOKEN = "</think>"


@dataclass
class LoadedModel:
    """A model ready for lm-eval, plus what the run records about it."""

    lm: Any  # an lm_eval.api.model.LM
    device: str
    has_chat_template: bool
    max_length: int  # the model's context length (0 = unknown)


class EvalBackend:
    """Loads a model for lm-eval. Subclasses set `name` and implement `load`."""

    name: ClassVar[str]

    def __init__(self, **settings: Any) -> None:
        if settings:
            raise TypeError(f"the {self.name} backend takes no settings (got {', '.join(settings)})")

    def preflight(self) -> None:
        """Raise `EvalError` when this backend cannot run here (missing package, no GPU)."""

    def settings(self) -> dict[str, Any]:
        """The backend's own settings, recorded in `results.json`."""
        return {}

    def load(
        self,
        model_dir: Path,
        *,
        device: str | None,
        batch_size: int | str,
        dtype: str,
        trust_remote_code: bool,
        enable_thinking: bool | None = None,
    ) -> LoadedModel:
        raise NotImplementedError


def thinking_args(enable_thinking: bool | None) -> dict[str, Any]:
    """lm-eval's model arguments for Qwen3's thinking switch (none when unset)."""
    if enable_thinking is None:
        return {}
    return {"enable_thinking": enable_thinking, **({"think_end_token": THINK_END_TOKEN} if enable_thinking else {})}
