"""The interface of a graft method: how an update is combined with an Instruct tensor.

A method never reads files: the engine streams each Instruct tensor chunk by chunk with the
float32 update its source provides (a Base/tuned pair, a stored delta or a LoRA adapter), and the
method writes `inst (+) update` into `out`. Its settings are a pydantic model (`Params`), so an
unknown or invalid setting fails before any byte is read.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, field_validator


class MethodParams(BaseModel):
    """Settings every method takes; a method adds its own fields in a subclass."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = 1.0

    @field_validator("alpha")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"alpha must be a finite number, got {v}")
        return v


class GraftMethod(ABC):
    """One way of combining Instruct with an update, tensor chunk by tensor chunk."""

    #: Registry name (``shadowft graft --method NAME``, ``graft.method`` in the config).
    name: ClassVar[str]
    #: One line for help texts and the error that lists the known methods.
    summary: ClassVar[str]
    #: The method's settings.
    Params: ClassVar[type[MethodParams]] = MethodParams

    def __init__(self, params: MethodParams) -> None:
        self.params = params

    @abstractmethod
    def combine(
        self, name: str, inst: torch.Tensor, update: torch.Tensor, scale: float, out: torch.Tensor
    ) -> torch.Tensor:
        """Write the grafted chunk of tensor `name` into `out` and return it.

        `inst` is the Instruct chunk: in float32 (converted exactly) when Instruct is stored in a 16-
        or 32-bit float dtype, else in its own dtype; `update` is the float32 update (a scratch
        buffer the method may modify); `scale` is the source's own factor (1, or LoRA's alpha / r);
        `out` has `update`'s shape: `update` itself when `inst` is float32 (the engine rounds the
        result to Instruct's dtype), else a buffer of the output dtype (torch rounds on store).
        Compute in float32.
        """

    def check(self, grafted: list[str]) -> list[str]:
        """Warnings about the settings once the grafted tensors are known (e.g. a rule matching none)."""
        return []

    def settings(self) -> dict[str, Any]:
        """The settings as recorded in the report and provenance."""
        return self.params.model_dump(mode="json")
