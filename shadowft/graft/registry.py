"""The graft methods by name. Adding one: a module in `methods/`, one line in `_METHODS`, its tests.

The method's `Params` become the config's `graft.<name>` section and the CLI's `--param KEY=VALUE`,
its `cache_settings` its part of the graft's cache key, its `sources` the update sources it takes:
nothing else names a method. This module (and the top level of every method module) imports no
torch: `shadowft.config` imports it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from shadowft.errors import ShadowFTError
from shadowft.graft.methods.base import GraftMethod
from shadowft.graft.methods.dare import Dare
from shadowft.graft.methods.linear import Linear
from shadowft.graft.methods.per_module import PerModule
from shadowft.graft.methods.ties import Ties
from shadowft.registry import lookup

_METHODS: tuple[type[GraftMethod], ...] = (
    Linear,
    PerModule,
    Dare,
    Ties,
)
METHODS: dict[str, type[GraftMethod]] = {m.name: m for m in _METHODS}
assert len(METHODS) == len(_METHODS), "two graft methods share a name"

#: The method a graft runs when none is named and no method's settings are given.
DEFAULT_METHOD = Linear.name


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> type[GraftMethod]:
    """The method class registered as `name`; an unknown name lists the known ones."""
    cls = lookup(METHODS, name, "graft method")
    return cls


def resolve_method_name(method: str | None, configured: Collection[str] = ()) -> str:
    """The method a graft runs (the one default-method rule): as named; else the one method whose
    settings were given (`configured`, e.g. a `graft.per_module` section); else `linear`."""
    if method is not None:
        return method
    given = list(dict.fromkeys(configured))
    if len(given) > 1:
        raise ShadowFTError(
            f"settings of several graft methods are given ({', '.join(given)}) but no method is named",
            hint=f"set graft.method (one of {', '.join(given)})",
        )
    return given[0] if given else DEFAULT_METHOD


def make_method(name: str, alpha: float = 1.0, settings: Mapping[str, Any] | None = None) -> GraftMethod:
    """Build method `name` with `alpha` and its own settings (None values are left out); bad
    settings are a ShadowFTError naming the setting, before any file is opened."""
    cls = get_method(name)
    if not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ShadowFTError(f"graft method {name!r}: alpha must be a finite number, got {alpha}")
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    try:
        params = cls.Params.model_validate(given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = "not a setting of this method" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            problems.append(f"{field}: {msg}")
        fields = ", ".join(cls.Params.model_fields) or "no settings besides alpha"
        raise ShadowFTError(
            f"graft method {name!r}: " + "; ".join(problems),
            hint=f"{name} takes: {fields}",
        ) from None
    return cls(params, float(alpha))


def check_source(method: GraftMethod | type[GraftMethod], kind: str) -> None:
    """Refuse an update source (`UpdateSource.kind`) the method does not combine."""
    if kind not in method.sources:
        raise ShadowFTError(
            f"graft method {method.name!r} does not take a {kind} update",
            hint=f"{method.name} takes: {', '.join(sorted(method.sources))}",
        )
