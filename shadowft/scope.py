"""Graft scope: which tensors receive the update; everything else is copied from Instruct."""

from __future__ import annotations

import re
from functools import lru_cache

from shadowft.errors import ShadowFTError

# The reference code grafts tensors whose names contain one of these (weights and biases).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NAMED_SCOPES = ("projections", "all")


@lru_cache(maxsize=64)
def compile_scope(scope: str) -> re.Pattern[str]:
    """`projections` (the paper's default), `all`, or a regular expression searched in names."""
    if scope == "projections":
        return re.compile("|".join(re.escape(p) for p in PROJECTIONS))
    if scope == "all":
        return re.compile("")
    try:
        return re.compile(scope)
    except re.error as exc:
        raise ShadowFTError(
            f"graft scope {scope!r} is neither 'projections', 'all' nor a valid regular expression ({exc})",
            hint=r"e.g. --scope 'mlp\.' or --scope 'layers\.(1[0-9])\.'",
        ) from None


def in_scope(name: str, scope: str) -> bool:
    return compile_scope(scope).search(name) is not None


def scope_name(pattern: re.Pattern[str]) -> str:
    """How the user wrote the scope `pattern` was compiled from (a named scope, or the regex)."""
    return next((n for n in NAMED_SCOPES if compile_scope(n) is pattern), pattern.pattern)
