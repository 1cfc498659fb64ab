"""The registry helpers config.py builds its name fields and settings sub-sections from."""

from __future__ import annotations

import pickle
from typing import ClassVar

import pytest
from pydantic import BaseModel, Field, ValidationError

from shadowft.registry import SettingsModel, registered_name, settings_for, with_settings_sections


class _FastSettings(SettingsModel):
    workers: int = Field(default=2, ge=1, le=64, description="Worker threads.")


class _Impl:
    """An implementation with no settings."""

    Settings: ClassVar[type[SettingsModel]] = SettingsModel


class _Fast(_Impl):
    """Runs fast.

    More words that stay out of the field's description."""

    Settings = _FastSettings


class _Graftish:
    summary = "Graft-like: settings are called Params."

    class Params(SettingsModel):
        alpha: float = 1.0
        density: float = Field(default=0.5, gt=0, le=1, description="Kept fraction.")


REG: dict[str, type] = {"plain": _Impl, "fast": _Fast}


@with_settings_sections(REG, selector="engine")
class _Section(BaseModel):
    """A config section."""

    engine: registered_name(REG, "engine", extra=("auto",)) = Field(default="auto", description="Which engine.")  # type: ignore[valid-type]


Section = _Section  # pickle looks classes up by name: keep one module-level name


def test_name_field_validates_against_the_registry_with_did_you_mean():
    assert _Section(engine="fast").engine == "fast" and _Section().engine == "auto"
    with pytest.raises(
        ValidationError, match=r"unknown engine 'fsat' \(did you mean 'fast'\?\); known engines: auto, fast, plain"
    ):
        _Section(engine="fsat")


def test_name_field_schema_is_an_enum_read_when_the_schema_is_made(monkeypatch):
    prop = _Section.model_json_schema()["properties"]["engine"]
    assert prop["type"] == "string" and prop["enum"] == ["auto", "plain", "fast"]
    monkeypatch.setitem(REG, "toy", _Impl)  # a test's toy: validated and listed with no rebuild
    assert _Section(engine="toy").engine == "toy"
    assert _Section.model_json_schema()["properties"]["engine"]["enum"] == ["auto", "plain", "fast", "toy"]


def test_one_sub_section_per_implementation_with_settings():
    schema = _Section.model_json_schema()
    assert list(schema["properties"]) == ["engine", "fast"]  # own fields first; "plain" has no settings
    assert schema["description"] == "A config section."
    fast = schema["properties"]["fast"]
    assert fast["description"] == "Runs fast; used with engine: fast."
    sub = schema["$defs"][fast["$ref"].split("/")[-1]]["properties"]["workers"]
    assert sub == {
        "default": 2,
        "description": "Worker threads.",
        "maximum": 64,
        "minimum": 1,
        "title": "Workers",
        "type": "integer",
    }
    s = _Section.model_validate({"engine": "fast", "fast": {"workers": 5}})
    assert settings_for(s, REG, "fast") == _FastSettings(workers=5) and settings_for(s, REG, "plain") == SettingsModel()
    assert _Section().fast == _FastSettings()  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        _Section.model_validate({"fast": {"wrokers": 5}})
    with pytest.raises(ValidationError, match="less than or equal to 64"):
        _Section.model_validate({"fast": {"workers": 65}})
    assert pickle.loads(pickle.dumps(s)) == s


def test_common_fields_and_params_and_clashes():
    @with_settings_sections(
        {"g": _Graftish, "lin": type("Lin", (), {"Params": _Graftish.Params.__base__})}, common={"alpha"}
    )
    class G(BaseModel):
        method: str = "g"

    assert list(G.model_fields) == ["method", "g"]
    assert G.model_fields["g"].description == "Graft-like: settings are called Params."
    with pytest.raises(TypeError, match="clash"):
        with_settings_sections({"method": _Fast})(G)


def test_a_hyphenated_implementation_gets_an_identifier_key_for_its_sub_section():
    """`hf-multimodal`'s settings are `eval.hf_multimodal`: the Prefect UI form lost the error of a refused
    value under a key with a hyphen (tests/test_ui_browser.py)."""
    from shadowft.config import load_config
    from shadowft.registry import section_key

    assert section_key("hf-multimodal") == "hf_multimodal" and section_key("vllm") == "vllm"
    cfg = load_config(None, ["eval.backend=hf-multimodal", "eval.hf_multimodal.max_images=2"])
    assert cfg.eval.backend_settings.max_images == 2
    assert cfg.eval.cache_view()["hf_multimodal"]["max_images"] == 2 and "vllm_vlm" not in cfg.eval.cache_view()
