"""Name -> implementation lookups for the engines' registries (objectives, launchers, eval backends,
graft methods), and what the config builds from a registry.

One helper so that every registry fails the same way: the unknown name, the known ones, and a
"did you mean" when the name is close to one of them.

Two helpers so that adding an implementation needs no edit to `shadowft/config.py`:

- `registered_name(REGISTRY, "what")`: the type of a name field (`eval.backend`, `train.launcher`):
  a `str` checked with `lookup` when validated, whose JSON schema carries `enum` of the registered
  names (read when the schema is made), so the Prefect UI renders a dropdown.
- `with_settings_sections(REGISTRY, ...)`: a class decorator for a config section that adds one
  sub-section field per implementation with settings (`eval.vllm`, `train.dpo`): the field is named
  by the implementation, typed by its settings model (the class's `Settings`, or graft's `Params`),
  described by the class's `summary` or docstring, and defaults to the settings' defaults.
  `settings_for(section, REGISTRY, name)` reads the chosen implementation's settings back.

This module imports only the stdlib, pydantic and `shadowft.errors`: config.py imports it, and so
does the top level of every implementation module.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    create_model,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from shadowft.errors import ShadowFTError

T = TypeVar("T")
M = TypeVar("M", bound=type[BaseModel])


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """`registry[name]`, or a `ShadowFTError` listing the known names of `what` (e.g. "objective")."""
    try:
        return registry[name]
    except KeyError:
        known = sorted(registry)
        close = difflib.get_close_matches(name, known, n=1)
        raise ShadowFTError(
            f"unknown {what} {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
            hint=f"known {what}s: {', '.join(known)}",
        ) from None


class SettingsModel(BaseModel):
    """Base of an implementation's settings: unknown keys are refused (a typo is an error, not a
    silently ignored setting), assignments are validated, inf / nan are refused. Give every field a
    `description=` and its bounds (`ge`, `le`): the Prefect UI form renders them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        """A NUL character in a name or path would fail only when the path is used."""
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("must not contain a NUL character")
        return v


# -- the name field --------------------------------------------------------------------------------


class _RegisteredName:
    """Pydantic metadata for `Annotated[str, _RegisteredName(...)]`: see `registered_name`."""

    def __init__(self, registry: Mapping[str, Any], what: str, extra: tuple[str, ...]) -> None:
        self.registry, self.what, self.extra = registry, what, extra

    def names(self) -> list[str]:
        return [*self.extra, *(n for n in self.registry if n not in self.extra)]

    def check(self, value: str) -> str:
        if value not in self.extra:
            try:
                lookup({n: None for n in self.names()}, value, self.what)
            except ShadowFTError as err:  # a validation error, so the loader names the field and the file
                raise PydanticCustomError(
                    "unknown_name", "{message}; {hint}", {"message": err.message, "hint": err.hint}
                ) from None
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["enum"] = self.names()  # read now: an implementation registered later is listed
        return json_schema


def registered_name(registry: Mapping[str, Any], what: str, *, extra: Collection[str] = ()) -> Any:
    """The type of a field naming one of `registry`'s implementations (use as `backend:
    registered_name(BACKENDS, "evaluation backend") = Field(default=...)`).

    Validation looks the name up in `registry` when the value is validated (so a registry a test
    extends is honoured) and fails with `lookup`'s "unknown ... (did you mean ...?)"; `extra` names
    accepted besides the registered ones (e.g. "auto"). The JSON schema is a string with `enum` of
    `extra` + the registered names.
    """
    return Annotated[str, _RegisteredName(registry, what, tuple(extra))]


# -- one settings sub-section per implementation ---------------------------------------------------


def settings_model(impl: Any) -> type[BaseModel] | None:
    """The settings model an implementation class declares (`Settings`, or graft's `Params`)."""
    model = getattr(impl, "Settings", None) or getattr(impl, "Params", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _summary(impl: Any) -> str:
    """The implementation's one-line description: its `summary`, else its docstring's first paragraph."""
    summary = getattr(impl, "summary", None)
    if isinstance(summary, str) and summary:
        return summary
    doc = inspect.getdoc(impl) or ""
    return " ".join(doc.split("\n\n")[0].split())


def section_key(name: str) -> str:
    """The config key of implementation `name`'s sub-section: its name with `-` as `_` (`eval.hf_multimodal`
    for the `hf-multimodal` backend). An identifier: the Prefect UI's form reports errors by key path,
    and a key with a hyphen left a refused value without its message."""
    return name.replace("-", "_")


def settings_sections(
    registry: Mapping[str, Any], *, selector: str | None = None, common: Collection[str] = ()
) -> dict[str, Any]:
    """`create_model` field definitions: one per implementation in `registry` whose settings model
    declares a field not in `common` (fields every implementation shares, e.g. graft's `alpha`),
    named by the implementation (`section_key`), typed by its settings model, defaulting to its defaults, described
    by its summary (+ "; used with `selector`: name" when `selector` is given)."""
    fields: dict[str, Any] = {}
    for name, impl in registry.items():
        model = settings_model(impl)
        if model is None or not set(model.model_fields) - set(common):
            continue
        description = _summary(impl)
        if selector:
            description = f"{description.rstrip('.')}; used with {selector}: {name}."
        fields[section_key(name)] = (model, Field(default_factory=model, description=description))
    return fields


def with_settings_sections(
    registry: Mapping[str, Any], *, selector: str | None = None, common: Collection[str] = ()
) -> Callable[[M], M]:
    """Class decorator for a config section: the section plus `settings_sections(registry, ...)`
    as fields (after the section's own fields, so the UI form shows them last).

    The sections are made when the decorated class is created: an implementation registered later
    (a test's toy) has none, and `settings_for` gives it its default settings. Code reads a section
    through `settings_for`, not as an attribute (type checkers do not see the added fields).
    """

    def decorate(cls: M) -> M:
        section: Any = cls
        fields = settings_sections(registry, selector=selector, common=common)
        clash = sorted(set(fields) & set(section.model_fields))
        if clash:
            raise TypeError(f"{section.__name__}: implementation names {clash} clash with its own fields")
        if not fields:
            return cls
        made: Any = create_model(
            section.__name__, __base__=section, __module__=section.__module__, __doc__=section.__doc__, **fields
        )
        made.__qualname__ = section.__qualname__  # pickle finds the decorated class under the section's name
        return cast(M, made)

    return decorate


def settings_for(section: BaseModel, registry: Mapping[str, Any], name: str) -> BaseModel | None:
    """The settings of implementation `name` held in `section` (its sub-section), or its settings'
    defaults when the section has no sub-section for it; None when it declares no settings model."""
    model = settings_model(registry[name])
    if model is None:
        return None
    key = section_key(name)
    held = getattr(section, key, None) if key in type(section).model_fields else None
    return held if isinstance(held, model) else model()
