"""The evaluation backend seam: a new backend is one class + one registry entry (here: registered from
this file alone), with its own settings, preflight and GPU count, run by the eval stage."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
from pydantic import BaseModel, Field

from shadowft.config import EvalConfig, load_config
from shadowft.errors import ShadowFTError
from shadowft.evaluate.backends import BACKENDS
from shadowft.evaluate.backends.hf import HFBackend
from shadowft.registry import SettingsModel


class RecorderSettings(SettingsModel):
    note: str = Field(default="toy", description="A label recorded with the results.")


class Recorder(HFBackend):
    """lm-eval's hf model, recording each preflight and load (a test's backend)."""

    name = "recorder"
    Settings = RecorderSettings
    seen: ClassVar[list[str]] = []

    def preflight(self) -> None:
        self.seen.append("preflight")

    def load(self, model_dir, **kwargs):
        self.seen.append("load")
        return super().load(model_dir, **kwargs)


class TwoGPUs(HFBackend):
    """A backend whose every evaluation occupies two GPUs."""

    name = "two-gpus"

    @classmethod
    def devices(cls, settings: BaseModel) -> int:
        return 2


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(BACKENDS, "recorder", Recorder)
    monkeypatch.setitem(BACKENDS, "two-gpus", TwoGPUs)
    Recorder.seen.clear()


def test_a_toy_backend_runs_through_the_eval_stage(toys, llama_trio, tmp_path):
    from shadowft.stages import eval_spec, preflight, run
    from shadowft.store import ArtifactStore

    config = load_config(None, ["eval.backend=recorder", "eval.suites=[toy-math]", "eval.limit=2"])
    assert "recorder" in EvalConfig.model_json_schema()["properties"]["backend"]["enum"]  # the UI's dropdown
    preflight(config)  # the run's preflight asks the backend itself
    assert Recorder.seen == ["preflight"]

    store = ArtifactStore(tmp_path / "store")
    spec = eval_spec(config.eval, llama_trio["instruct"], store=store)
    hf = eval_spec(config.eval.model_copy(update={"backend": "hf"}), llama_trio["instruct"], store=store)
    assert spec.key != hf.key and spec.config["backend"] == "recorder"  # a backend's scores are its own
    done, built = run(spec, store)
    assert built and Recorder.seen == ["preflight", "preflight", "load"]  # the stage checks again before loading
    result = json.loads((done.path / "results.json").read_text())
    assert result["backend"] == "recorder" and result["backend_settings"] == {"note": "toy"}
    assert store.manifest("eval", done.key)["backend"] == "recorder"


def test_a_backend_needing_more_gpus_than_a_slot_fails_when_the_config_loads(toys):
    with pytest.raises(ShadowFTError, match=r"eval.backend two-gpus .* needs 2 GPUs per evaluation .* is 1"):
        load_config(None, ["eval.backend=two-gpus"])
    assert load_config(None, ["eval.backend=two-gpus", "resources.devices_per_stage=2"]).eval.backend == "two-gpus"
    with pytest.raises(
        ShadowFTError, match=r"eval.backend: unknown evaluation backend 'recordr' \(did you mean 'recorder'\?\)"
    ):
        load_config(None, ["eval.backend=recordr"])
    with pytest.raises(ShadowFTError, match=r"bad recorder setting.*colour: unknown setting"):
        Recorder(colour="red")
