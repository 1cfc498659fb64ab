"""The launcher seam: a new launcher is one class + one registry entry (here: registered from this file
alone), with its own settings, its part of `train.launcher: auto`, its preflight, run by the train stage."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
from pydantic import Field

from shadowft.config import TrainConfig, load_config
from shadowft.errors import ShadowFTError
from shadowft.registry import SettingsModel
from shadowft.train.launchers import LAUNCHERS
from shadowft.train.launchers.inprocess import InProcess
from shadowft.train.resources import resolve_launch


class RecordingSettings(SettingsModel):
    tag: str = Field(default="rec", description="A label the launcher records.")


class Recording(InProcess):
    """Trains in this process like inprocess, and records each preflight and launch (a test's launcher)."""

    name = "recording"
    Settings = RecordingSettings
    auto_priority = 100  # `auto` asks it first: it takes every one-process job
    seen: ClassVar[list[tuple[str, object]]] = []

    @classmethod
    def suits(cls, req):
        return req.world_size == 1

    def preflight(self, plan):
        self.seen.append(("preflight", plan.settings))

    def launch(self, job, plan, progress):
        self.seen.append(("launch", plan.settings))
        return super().launch(job, plan, progress)


@pytest.fixture
def recording(monkeypatch):
    monkeypatch.setitem(LAUNCHERS, "recording", Recording)
    Recording.seen.clear()
    return Recording


def test_a_toy_launcher_runs_through_the_train_stage(recording, llama_trio, tmp_path):
    from shadowft.stages import data_spec, preflight, run, train_spec
    from shadowft.store import ArtifactStore

    rows = [
        {"messages": [{"role": "user", "content": f"{a}+1?"}, {"role": "assistant", "content": str(a + 1)}]}
        for a in range(8)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"data.sources=['{tmp_path / 'd.jsonl'}']", "data.max_length=64", "train.max_steps=2"]
    overrides += ["train.batch_size=4", "train.grad_accum=1"]
    config = load_config(None, [*overrides, "train.launcher=recording"])
    assert "recording" in TrainConfig.model_json_schema()["properties"]["launcher"]["enum"]  # the UI's dropdown
    # `auto` asks the registry: the toy's priority and `suits` pick it for a one-process job
    assert resolve_launch(TrainConfig(), gpus=0).launcher == "recording"
    assert resolve_launch(TrainConfig(num_processes=2), gpus=0).launcher == "torchrun"

    preflight(config)  # the run's preflight calls the launcher's hook
    assert recording.seen == [("preflight", {"tag": "rec"})]

    store = ArtifactStore(tmp_path / "store")
    data, _ = run(data_spec(config.data, llama_trio["instruct"], config.train.objective), store)
    spec = train_spec(config.train, llama_trio["base"], data, store)
    # the launcher is not keyed: the machine picks it, and every launcher trains the same model
    default = load_config(None, overrides).train
    assert spec.key == train_spec(default, llama_trio["base"], data, store).key
    trained, built = run(spec, store)
    assert (
        built
        and recording.seen[-1] == ("launch", {"tag": "rec"})
        and [e for e, _ in recording.seen].count("launch") == 1
    )
    result = store.manifest("train", trained.key)["train"]
    assert result["launcher"] == "recording" and result["global_step"] == 2


def test_a_launcher_refuses_what_it_cannot_run_and_unknown_names_say_the_known_ones():
    with pytest.raises(ShadowFTError, match="inprocess cannot run 2"):
        resolve_launch(TrainConfig(launcher="inprocess", num_processes=2), gpus=0)
    with pytest.raises(
        ShadowFTError, match=r"train.launcher: unknown launcher 'torchrn' \(did you mean 'torchrun'\?\)"
    ):
        load_config(None, ["train.launcher=torchrn"])
    with pytest.raises(ShadowFTError, match="train.accelerate_config is now train.accelerate.config"):
        load_config(None, ["train.accelerate_config=x.yaml"])
    acc = load_config(None, ["train.accelerate.config=/x.yaml"]).train
    assert resolve_launch(acc, gpus=1).launcher == "accelerate"  # a config file makes `auto` pick accelerate
    assert resolve_launch(acc, gpus=1).settings == {"config": "/x.yaml"}
    assert acc.cache_view()["accelerate_config"] == "/x.yaml"  # keyed under its name from before the sub-section
    assert TrainConfig().cache_view()["accelerate_config"] is None and "accelerate" not in TrainConfig().cache_view()
