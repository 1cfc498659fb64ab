"""`per_module`: a different alpha per module, chosen by regular expressions over tensor names.

    W = W_instruct + alpha(name) * update,  alpha(name) = the alpha of the first rule whose
    regex is found in `name` (re.search, like --scope), else the graft's `alpha`.

E.g. {"q_proj|k_proj|v_proj|o_proj": 0.5, "mlp": 1.0}: attention gets half the update.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from shadowft.errors import ShadowFTError
from shadowft.graft.methods.base import GraftMethod, MethodParams

if TYPE_CHECKING:
    import torch


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
    # allow_inf_nan: a nan alpha is refused by check_alpha_rules, with its own message
    model_config = MethodParams.model_config | {"allow_inf_nan": True}

    alpha_by_module: dict[str, float] = Field(
        default_factory=dict,
        description="Per-module alpha, {regex: alpha}: the first regex found in a tensor's name gives its alpha, "
        "tensors matching none use graft.alpha; e.g. {'q_proj|k_proj|v_proj|o_proj': 0.5, 'mlp': 1.0}.",
    )

    @field_validator("alpha_by_module")
    @classmethod
    def _rules(cls, v: dict[str, float]) -> dict[str, float]:
        return check_alpha_rules(v)


class PerModule(GraftMethod):
    name = "per_module"
    summary = "W_instruct + alpha(name) * update; alpha(name) from the first matching alpha_by_module regex"
    Params = PerModuleParams
    legacy_keys = ("alpha_by_module",)  # graft.alpha_by_module, before graft.per_module existed

    def __init__(self, params: PerModuleParams, alpha: float = 1.0) -> None:
        super().__init__(params, alpha)
        if not params.alpha_by_module:
            raise ShadowFTError(
                "graft method 'per_module': alpha_by_module: give at least one REGEX=ALPHA rule",
                hint="e.g. graft.per_module.alpha_by_module: {'q_proj|k_proj|v_proj|o_proj': 0.5, mlp: 1.0}",
            )
        self.rules = [(re.compile(p), a) for p, a in params.alpha_by_module.items()]
        self._alphas: dict[str, float] = {}

    def alpha_for(self, name: str) -> float:
        a = self._alphas.get(name)
        if a is None:
            a = next((alpha for rx, alpha in self.rules if rx.search(name)), self.alpha)
            self._alphas[name] = a
        return a

    def combine(
        self, name: str, inst: torch.Tensor, update: torch.Tensor, scale: float, out: torch.Tensor, start: int
    ) -> torch.Tensor:
        import torch

        return torch.add(inst, update, alpha=self.alpha_for(name) * scale, out=out)

    def check(self, grafted: list[str]) -> list[str]:
        unused = [rx.pattern for rx, _ in self.rules if not any(rx.search(n) for n in grafted)]
        return [f"alpha_by_module rule {p!r} matches no grafted tensor" for p in unused]

    def describe(self) -> str:
        rules = ", ".join(f"`{rx.pattern}` {a:g}" for rx, a in self.rules)
        return f"alpha(module) ({rules}, else {self.alpha:g}) x update"

    @classmethod
    def cache_settings(cls, params: MethodParams) -> dict[str, Any]:
        """The rules as a list of pairs (their order decides which rule wins), under the key they
        had before methods had sections: the keys of earlier per_module grafts stay valid."""
        assert isinstance(params, PerModuleParams)
        return {"alpha_by_module": [[rx, a] for rx, a in params.alpha_by_module.items()]}
