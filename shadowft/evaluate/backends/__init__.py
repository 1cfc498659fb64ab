"""Evaluation backends by name (`eval.backend`). Add one: a module here + a line in `BACKENDS`."""

from __future__ import annotations

from typing import Any

from shadowft.evaluate.backends.base import EvalBackend, LoadedModel
from shadowft.evaluate.backends.hf import HFBackend
from shadowft.evaluate.backends.hf_multimodal import HFMultimodalBackend
from shadowft.evaluate.backends.vllm import VLLMBackend
from shadowft.evaluate.backends.vllm_vlm import VLLMVLMBackend
from shadowft.registry import lookup

BACKENDS: dict[str, type[EvalBackend]] = {
    "hf": HFBackend,
    "vllm": VLLMBackend,
    "hf-multimodal": HFMultimodalBackend,
    "vllm-vlm": VLLMVLMBackend,
}
DEFAULT_BACKEND = "hf"


def get_backend(name: str = DEFAULT_BACKEND, **settings: Any) -> EvalBackend:
    """A new instance of the evaluation backend called `name`, with its own settings (vllm's engine
    arguments, hf-multimodal's image settings; hf has none)."""
    return lookup(BACKENDS, name, "evaluation backend")(**settings)


__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "EvalBackend",
    "LoadedModel",
    "get_backend",
    "VLLMBackend",
    "HFBackend",
    "HFMultimodalBackend",
    "VLLMVLMBackend",
]
