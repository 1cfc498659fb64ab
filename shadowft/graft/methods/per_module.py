"""`per_module`: a different alpha per module, chosen by regular expressions over tensor names.

    W = W_instruct + alpha(name) * update,  alpha(name) = the alpha of the first rule whose
    regex is found in `name` (re.search, like --scope), else the method's `alpha`.

E.g. {"q_proj|k_proj|v_proj|o_proj": 0.5, "mlp": 1.0}: attention gets half the update.
"""

from __future__ import annotations

import math
import re

import torch
from pydantic import field_validator

from shadowft.errors import ShadowFTError
from shadowft.graft.methods.base import GraftMethod, MethodParams


def check_alpha_rules(rules: dict[str, float]) -> dict[str, float]:
    """Validate rules {regex: alpha}: regexes compile, alphas are finite and not negative."""
    for pattern, alpha in rules.items():
        if not pattern:
            raise ValueError("an empty regex matches every tensor; set `alpha` instead")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha of {pattern!r} must be a finite number >= 0, got {alpha}")
    return rules


def parse_alpha_rules(texts: list[str]) -> dict[str, float]:
    """Rules from the command line, each ``REGEX=ALPHA`` (split at the last ``=``), in order."""
    rules: dict[str, float] = {}
    for text in texts:
        pattern, sep, value = text.rpartition("=")
        try:
            alpha = float(value)
        except ValueError:
            alpha = None
        if not sep or not pattern or alpha is None:
            raise ShadowFTError(
                f"cannot read the per-module alpha {text!r}",
                hint="write REGEX=ALPHA, e.g. --alpha-by-module 'q_proj|k_proj|v_proj|o_proj=0.5' "
                "--alpha-by-module 'mlp=1.0'",
            )
        rules[pattern] = alpha
    try:
        return check_alpha_rules(rules)
    except ValueError as exc:
        raise ShadowFTError(f"--alpha-by-module: {exc}") from None


class PerModuleParams(MethodParams):
    alpha_by_module: dict[str, float]

    @field_validator("alpha_by_module")
    @classmethod
    def _rules(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("give at least one REGEX=ALPHA rule")
        return check_alpha_rules(v)


class PerModule(GraftMethod):
    name = "per_module"
    summary = "W_instruct + alpha(name) * update; alpha(name) from the first matching alpha_by_module regex"
    Params = PerModuleParams

    def __init__(self, params: PerModuleParams) -> None:
        super().__init__(params)
        self.rules = [(re.compile(p), a) for p, a in params.alpha_by_module.items()]
        self._alphas: dict[str, float] = {}

    def alpha_for(self, name: str) -> float:
        a = self._alphas.get(name)
        if a is None:
            a = next((alpha for rx, alpha in self.rules if rx.search(name)), self.params.alpha)
            self._alphas[name] = a
        return a

    def combine(
        self, name: str, inst: torch.Tensor, update: torch.Tensor, scale: float, out: torch.Tensor
    ) -> torch.Tensor:
        return torch.add(inst, update, alpha=self.alpha_for(name) * scale, out=out)

    def check(self, grafted: list[str]) -> list[str]:
        unused = [rx.pattern for rx, _ in self.rules if not any(rx.search(n) for n in grafted)]
        return [f"alpha_by_module rule {p!r} matches no grafted tensor" for p in unused]
