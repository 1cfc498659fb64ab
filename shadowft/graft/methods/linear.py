"""`linear`: W_instruct + alpha * update, the published Shadow-FT graft."""

from __future__ import annotations

import torch

from shadowft.graft.methods.base import GraftMethod


class Linear(GraftMethod):
    name = "linear"
    summary = "W_instruct + alpha * update (the paper's graft)"

    def combine(
        self, name: str, inst: torch.Tensor, update: torch.Tensor, scale: float, out: torch.Tensor
    ) -> torch.Tensor:
        return torch.add(inst, update, alpha=self.params.alpha * scale, out=out)
