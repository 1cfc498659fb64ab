"""The graft-method seam: a method registered from this file alone (no edit to config.py, stages.py,
graft/api.py, the CLI) runs through the config, the pipeline's graft stage, its cache key and the
CLI; and the config's `graft.<method>` sections, old spelling and cache keys."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import torch
from pydantic import Field

from shadowft.errors import ShadowFTError
from shadowft.graft import PROVENANCE_NAME, extract_delta
from shadowft.graft.methods.base import GraftMethod, MethodParams
from shadowft.graft.registry import METHODS
from tests.helpers import load_dir

if TYPE_CHECKING:
    from pathlib import Path


class ShrinkParams(MethodParams):
    factor: float = Field(default=4.0, gt=0, description="The update is divided by this.")


class Shrink(GraftMethod):
    """A toy: W_instruct + alpha * update / factor."""

    name = "shrink"
    summary = "W_instruct + alpha * update / factor (a test's toy)"
    Params = ShrinkParams
    sources = frozenset({"delta", "base-tuned"})

    def combine(self, name, inst, update, scale, out, start):  # type: ignore[no-untyped-def]
        return torch.add(inst, update, alpha=self.alpha * scale / self.params.factor, out=out)


@pytest.fixture()
def shrink(monkeypatch: pytest.MonkeyPatch) -> type[Shrink]:
    monkeypatch.setitem(METHODS, Shrink.name, Shrink)
    return Shrink


def _delta_artifact(trio: dict[str, Path], tmp_path: Path) -> Any:
    from shadowft.store import Artifact

    extract_delta(trio["base"], trio["tuned"], tmp_path / "d" / "delta")
    return Artifact(stage="delta", key="k", path=tmp_path / "d", build_id="b")


def test_a_method_registered_by_a_test_runs_through_the_graft_stage(shrink, llama_trio, tmp_path):
    from shadowft.config import GraftConfig, load_config
    from shadowft.stages import graft_spec, run
    from shadowft.store import ArtifactStore

    update = _delta_artifact(llama_trio, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    cfg = load_config(None, ["graft.method=shrink", "graft.alpha=0.5"]).graft  # the name field knows it now
    assert "shrink" in GraftConfig.model_json_schema()["properties"]["method"]["anyOf"][0]["enum"]
    art, built = run(graft_spec(cfg, llama_trio["instruct"], update), store)
    assert built
    got, i = load_dir(art.path / "model"), load_dir(llama_trio["instruct"])
    b, t = load_dir(llama_trio["base"]), load_dir(llama_trio["tuned"])
    n = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(got[n], torch.add(i[n], t[n] - b[n], alpha=0.5 / 4.0))
    prov = json.loads((art.path / "model" / PROVENANCE_NAME).read_text())
    assert prov["graft_method"] == "shrink" and prov["method_settings"] == {"alpha": 0.5, "factor": 4.0}
    assert cfg.cache_view() == {"alpha": 0.5, "scope": "projections", "method": "shrink", "shrink": {"factor": 4.0}}

    # a changed setting is a new key (a method registered after config.py was imported has no
    # graft.<name> sub-section: it runs with its defaults; one in the registry's list gets its section)
    other = cfg.model_copy(update={"alpha": 0.25})
    art2, built = run(graft_spec(other, llama_trio["instruct"], update), store)
    assert built and art2.key != art.key


def test_a_method_refuses_a_source_it_does_not_take(shrink, llama_trio, tmp_path):
    from shadowft.graft import graft
    from tests.helpers import assert_nothing_written, make_adapter

    adapter = make_adapter(llama_trio["base"], tmp_path / "adapter")
    with pytest.raises(ShadowFTError, match="graft method 'shrink' does not take a lora update") as exc:
        graft(llama_trio["instruct"], tmp_path / "o", adapter=adapter, method="shrink")
    assert exc.value.hint == "shrink takes: base-tuned, delta"
    assert_nothing_written(tmp_path / "o")


def test_the_cli_passes_a_methods_settings_generically(shrink, llama_trio, tmp_path):
    from typer.testing import CliRunner

    from shadowft.cli import app

    trio = llama_trio
    args = ["graft", "--instruct", str(trio["instruct"]), "--base", str(trio["base"]), "--tuned", str(trio["tuned"])]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o"), "--method", "shrink", "--param", "factor=2"])
    assert res.exit_code == 0, res.output
    prov = json.loads((tmp_path / "o" / PROVENANCE_NAME).read_text())
    assert prov["graft_method"] == "shrink" and prov["method_settings"] == {"alpha": 1.0, "factor": 2.0}
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x"), "--method", "shrink", "--param", "fctor=2"])
    assert res.exit_code != 0 and "fctor: not a setting of this method" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x"), "--param", "factor=2"])
    assert res.exit_code != 0 and "name the method" in str(res.exception)


# ---------------------------------------------------------------------------------------------
# the config's graft section
# ---------------------------------------------------------------------------------------------
def test_graft_sections_cache_keys_and_old_spelling():
    from shadowft.config import load_config

    base = load_config(None, []).graft.cache_view()
    assert base == {"alpha": 1.0, "scope": "projections"}  # linear: the keys of existing grafts
    assert load_config(None, ["graft.method=linear"]).graft.cache_view() == base
    # a method's own settings do not move another method's key
    assert load_config(None, ["graft.method=linear", "graft.ties.density=0.5"]).graft.cache_view() == base
    dare = load_config(None, ["graft.method=dare", "graft.dare.density=0.3"])
    assert dare.graft.cache_view() == {
        "alpha": 1.0,
        "scope": "projections",
        "method": "dare",
        "dare": {"density": 0.3, "seed": 0},
    }
    assert load_config(None, ["graft.dare.density=0.3"]).graft.cache_view() == dare.graft.cache_view()  # implied
    assert load_config(None, ["graft.method=dare", "graft.dare.seed=1"]).graft.cache_view() != dare.graft.cache_view()
    ties = load_config(None, ["graft.method=ties"])
    assert ties.graft.method_settings == {"density": 0.5} and ties.graft.cache_view()["ties"] == {"density": 0.5}
    # the old spelling keeps working, with the key per_module grafts had
    old = load_config(None, ["graft.alpha_by_module={mlp: 0.5}"])
    new = load_config(None, ["graft.per_module.alpha_by_module={mlp: 0.5}"])
    assert old.graft.effective_method == new.graft.effective_method == "per_module"
    assert (
        old.graft.cache_view()
        == new.graft.cache_view()
        == {
            "alpha": 1.0,
            "scope": "projections",
            "method": "per_module",
            "alpha_by_module": [["mlp", 0.5]],
        }
    )
    # a dumped config reads back as the same graft (the method is resolved when read)
    from shadowft.config import RunConfig

    again = RunConfig.model_validate(json.loads(old.model_dump_json()))
    assert again.graft.cache_view() == old.graft.cache_view()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["graft.method=dre"], "unknown graft method 'dre' (did you mean 'dare'?)"),
        (["graft.dare.density=0"], "graft.dare.density: must be greater than 0"),
        (
            ["graft.method=ties", "graft.ties.density=1.5"],
            "graft.ties.density: must be at most 1",
        ),
        (["graft.dare.density=0.4", "graft.ties.density=0.3"], "settings of several graft methods are given"),
        (["graft.method=linear", "graft.dare.density=0.3"], "graft.dare is set but graft.method is linear"),
        (
            ["graft.alpha_by_module={mlp: 0.5}", "graft.per_module.alpha_by_module={mlp: 1}"],
            "graft.alpha_by_module is the old spelling of graft.per_module.alpha_by_module",
        ),
        (["graft.method=per_module"], "alpha_by_module: give at least one REGEX=ALPHA rule"),
        (["graft.dare.densty=0.5"], "graft.dare.densty"),
    ],
)
def test_bad_graft_settings_fail_at_load(overrides, message):
    from shadowft.config import load_config

    with pytest.raises(ShadowFTError) as exc:
        load_config(None, overrides)
    assert message in str(exc.value) + (exc.value.hint or ""), str(exc.value)
