"""`linear`: W_instruct + alpha * update, the published Shadow-FT graft."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shadowft.graft.methods.base import GraftMethod

if TYPE_CHECKING:
    import torch


class Linear(GraftMethod):
    name = "linear"
    summary = "W_instruct + alpha * update (the paper's graft)"

    def combine(
        self, name: str, inst: torch.Tensor, update: torch.Tensor, scale: float, out: torch.Tensor, start: int
    ) -> torch.Tensor:
        import torch

        return torch.add(inst, update, alpha=self.alpha * scale, out=out)

    def describe(self) -> str:
        return f"{self.alpha:g} x update"
