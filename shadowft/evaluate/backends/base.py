"""The evaluation backend seam: how generations and log-likelihoods are produced.

A backend turns a model directory into an lm-eval `LM` object. Everything around it (suites, task
building, the run, the results schema) is shared, so every backend writes the same `results.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


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

    def load(
        self,
        model_dir: Path,
        *,
        device: str | None,
        batch_size: int | str,
        dtype: str,
        trust_remote_code: bool,
    ) -> LoadedModel:
        raise NotImplementedError
