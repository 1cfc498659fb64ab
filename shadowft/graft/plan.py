"""The graft plan: for every Instruct tensor, copy it or combine it with its update.

Planning runs after validation (`validate.py`) and never refuses input: it only decides, per
tensor, what the engine does, and collects the warnings the report carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shadowft.checkpoint import Checkpoint
from shadowft.graft.engine import TensorUpdate
from shadowft.graft.sources import UpdateSource
from shadowft.graft.validate import VocabPolicy


@dataclass
class GraftPlan:
    updates: dict[str, TensorUpdate | None]  # Instruct's tensors in order; None = copied
    warnings: list[str]
    in_scope_without_update: int

    @property
    def grafted(self) -> list[str]:
        return [n for n, u in self.updates.items() if u is not None]


def make_plan(
    instruct: Checkpoint, source: UpdateSource, pattern: re.Pattern[str], scope: str, policy: VocabPolicy
) -> GraftPlan:
    """Tensors outside scope, or not floating point, are copied; the others get the source's update."""
    warnings = source.plan_warnings(pattern, scope)
    updates: dict[str, TensorUpdate | None] = {}
    without_update = 0
    for name, info in instruct.tensors.items():
        if not pattern.search(name) or not info.dtype.is_floating_point:
            updates[name] = None
            continue
        updates[name] = source.update_for(name, info, policy, warnings)
        without_update += updates[name] is None and source.carries_every_tensor
    if without_update:
        warnings.append(f"{without_update} tensor(s) in scope have no update and were copied from instruct")
    return GraftPlan(updates, warnings, without_update)
