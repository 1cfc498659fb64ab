"""The graft methods by name. Adding one: a module in `methods/`, one line in `_METHODS`, a test."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shadowft.errors import ShadowFTError
from shadowft.graft.methods.base import GraftMethod
from shadowft.graft.methods.linear import Linear
from shadowft.graft.methods.per_module import PerModule

_METHODS: tuple[type[GraftMethod], ...] = (
    Linear,
    PerModule,
)
METHODS: dict[str, type[GraftMethod]] = {m.name: m for m in _METHODS}
assert len(METHODS) == len(_METHODS), "two graft methods share a name"


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> type[GraftMethod]:
    """The method class registered as `name`; an unknown name lists the known ones."""
    cls = METHODS.get(name)
    if cls is None:
        known = ", ".join(f"{n} ({m.summary})" for n, m in METHODS.items())
        raise ShadowFTError(f"unknown graft method {name!r}", hint=f"known methods: {known}")
    return cls


def resolve_method_name(method: str | None, alpha_by_module: dict[str, float] | None) -> str:
    """The method a run uses: as given, else per_module when per-module alphas are set, else linear."""
    if method is not None:
        return method
    return PerModule.name if alpha_by_module else Linear.name


def make_method(name: str, **settings: Any) -> GraftMethod:
    """Build method `name` from its settings (None values are left out); bad settings are a
    ShadowFTError naming the setting, before any file is opened."""
    cls = get_method(name)
    given = {k: v for k, v in settings.items() if v is not None}
    try:
        params = cls.Params.model_validate(given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = "not a setting of this method" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            problems.append(f"{field}: {msg}")
        fields = ", ".join(cls.Params.model_fields)
        raise ShadowFTError(
            f"graft method {name!r}: " + "; ".join(problems),
            hint=f"{name} takes: {fields}",
        ) from None
    return cls(params)
