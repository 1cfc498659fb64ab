"""Training objectives by name (`train.objective`). Add one: a module here + a line in `OBJECTIVES`
(its settings become the config's `train.<name>` sub-section; see CONTRIBUTING.md)."""

from __future__ import annotations

from shadowft.registry import lookup
from shadowft.train.objectives.base import Objective, TrainerParts
from shadowft.train.objectives.dpo import DPO
from shadowft.train.objectives.grpo import GRPO
from shadowft.train.objectives.kto import KTO
from shadowft.train.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {"sft": SFT, "dpo": DPO, "kto": KTO, "grpo": GRPO}


def get_objective(name: str) -> Objective:
    """A new instance of the objective called `name`."""
    return lookup(OBJECTIVES, name, "objective")()


__all__ = ["OBJECTIVES", "Objective", "TrainerParts", "get_objective"]
