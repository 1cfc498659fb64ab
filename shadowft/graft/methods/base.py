"""The interface of a graft method: how an update is combined with an Instruct tensor.

A method never reads files: the engine streams each Instruct tensor chunk by chunk with the
float32 update its source provides (a Base/tuned pair, a stored delta or a LoRA adapter), and the
method writes `inst (+) update` into `out`. Its own settings are a pydantic model (`Params`): an
unknown or invalid setting fails before any byte is read, and the run config gets a `graft.<name>`
sub-section built from it (`shadowft.registry.with_settings_sections`), the CLI a `--param KEY=VALUE`.
`alpha` is the graft's, common to every method (`graft.alpha`, `--alpha`), not a `Params` field.

Only the stdlib, pydantic and shadowft's light modules at the top level: `shadowft.config` imports
the registry, and with it every method module (torch is imported where the arithmetic runs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from shadowft.registry import SettingsModel

if TYPE_CHECKING:
    import torch

#: The update sources (`UpdateSource.kind`): a Base/tuned pair, a stored delta, a LoRA adapter.
ALL_SOURCES: frozenset[str] = frozenset({"base-tuned", "delta", "lora"})

# Streams the update of one tensor again, from its first element: (start, end, float32 chunk)
UpdateStream = Callable[[], Iterator[tuple[int, int, "torch.Tensor"]]]


class MethodParams(SettingsModel):
    """A method's own settings (none for `linear`); a method with settings subclasses it. Give each
    field a default, a `description=` and its bounds: the UI form renders them."""


class GraftMethod(ABC):
    """One way of combining Instruct with an update, tensor chunk by tensor chunk."""

    #: Registry name (``shadowft graft --method NAME``, ``graft.method`` in the config).
    name: ClassVar[str]
    #: One line for help texts and the error that lists the known methods.
    summary: ClassVar[str]
    #: The method's own settings (``graft.<name>`` in the config, ``--param KEY=VALUE`` on the CLI).
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: The update sources the method combines (`UpdateSource.kind`); another is refused before reading.
    sources: ClassVar[frozenset[str]] = ALL_SOURCES
    #: Keys of the config's `graft` section that are old spellings of this method's settings
    #: (moved into `graft.<name>` when a config is read, e.g. per_module's ``alpha_by_module``).
    legacy_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: MethodParams, alpha: float = 1.0) -> None:
        self.params = params
        self.alpha = alpha

    def prepare(self, name: str, n: int, update: UpdateStream) -> None:
        """Called once per grafted tensor, before its chunks are combined: a method that needs a
        statistic of the whole update (TIES' magnitude threshold) streams it here (each call of
        `update()` reads it again, in chunks, so memory stays bounded); also the place to reset
        per-tensor state. `n` elements of the tensor have an update."""
        return None

    @abstractmethod
    def combine(
        self, name: str, inst: torch.Tensor, update: torch.Tensor, scale: float, out: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Write the grafted chunk of tensor `name` into `out` and return it.

        `inst` is the Instruct chunk: in float32 (converted exactly) when Instruct is stored in a 16-
        or 32-bit float dtype, else in its own dtype; `update` is the float32 update of the tensor's
        elements [start, start + update.numel()) (a scratch buffer the method may modify, shaped
        as the source makes it: keep a method's result independent of the chunking); `scale` is
        the source's own factor (1, or LoRA's alpha / r); `out` has `update`'s shape: `update`
        itself when `inst` is float32 (the engine rounds the result to Instruct's dtype), else a
        buffer of the output dtype (torch rounds on store). Compute in float32.
        """

    def check(self, grafted: list[str]) -> list[str]:
        """Warnings about the settings once the grafted tensors are known (e.g. a rule matching none)."""
        return []

    def settings(self) -> dict[str, Any]:
        """The settings as recorded in the report and provenance (alpha and the method's own)."""
        return {"alpha": self.alpha, **self.params.model_dump(mode="json")}

    def describe(self) -> str:
        """What is added to Instruct, for summaries: ``W = W_instruct + <this>``."""
        own = ", ".join(f"{k} {v}" for k, v in self.params.model_dump(mode="json").items())
        return f"{self.alpha:g} x {self.name}(update{', ' + own if own else ''})"

    @classmethod
    def cache_settings(cls, params: MethodParams) -> dict[str, Any]:
        """The method's part of the graft stage's cache key (besides alpha, scope and its name):
        ``{name: settings}``, or nothing when it has no settings."""
        own = params.model_dump(mode="json")
        return {cls.name: own} if own else {}
