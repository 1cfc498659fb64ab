"""The training seams: objective, method and launcher registries, the config field, the phases."""

from __future__ import annotations

import json

import pytest

from shadowft.config import RunConfig, TrainConfig, load_config
from shadowft.errors import ShadowFTError
from shadowft.train import setup, train_model
from shadowft.train.job import TrainJob
from shadowft.train.launchers import LAUNCHERS, Launcher, get_launcher
from shadowft.train.methods import METHODS, get_method
from shadowft.train.objectives import OBJECTIVES, Objective, get_objective
from shadowft.train.objectives.sft import SFT, PadCollator


def test_objective_registry():
    assert isinstance(get_objective("sft"), SFT) and set(OBJECTIVES) == {"sft", "dpo"}
    assert all(issubclass(o, Objective) for o in OBJECTIVES.values())
    with pytest.raises(ShadowFTError, match="unknown objective 'ppo'") as err:
        get_objective("ppo")
    assert "sft" in err.value.hint and "dpo" in err.value.hint


def test_launcher_registry():
    assert get_launcher().name == "inprocess" and set(LAUNCHERS) == {"inprocess", "torchrun", "accelerate"}
    assert all(issubclass(lc, Launcher) for lc in LAUNCHERS.values())
    with pytest.raises(ShadowFTError, match="unknown launcher 'mpirun'") as err:
        get_launcher("mpirun")
    assert "inprocess" in err.value.hint and "torchrun" in err.value.hint


def test_method_registry_says_what_each_method_publishes():
    assert {n: m.produces for n, m in METHODS.items()} == {"lora": "adapter", "full": "model"}
    with pytest.raises(ShadowFTError, match="unknown training method 'qlora'") as err:
        get_method("qlora")
    assert "full" in err.value.hint and "lora" in err.value.hint


def test_objective_is_a_config_field_in_the_train_key():
    assert TrainConfig().objective == "sft"
    assert TrainConfig.model_fields["objective"].description
    assert RunConfig().stage_view("train")["objective"] == "sft"
    # the method's own fields still decide the key as before: other methods' fields are left out
    lora, full = RunConfig().stage_view("train"), load_config(None, ["train.method=full"]).stage_view("train")
    assert "full_save_dtype" not in lora and "lora_rank" in lora
    assert "lora_rank" not in full and full["full_save_dtype"] == "fp32"
    with pytest.raises(ShadowFTError, match=r"train\.objective: must be one of 'sft' or 'dpo'"):
        load_config(None, ["train.objective=ppo"])
    # objective settings are in the key of their own objective only (SFT keys do not move)
    assert "dpo_beta" not in lora
    dpo = load_config(None, ["train.objective=dpo", "train.dpo_beta=0.2"]).stage_view("train")
    assert dpo["dpo_beta"] == 0.2 and dpo["dpo_loss"] == "sigmoid" and dpo["lr"] == 5e-6


def test_sft_collator_pads_and_masks():
    batch = PadCollator(pad_id=0, pad_to_multiple_of=4)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


@pytest.fixture
def prepared(llama_trio, tmp_path):
    from shadowft.config import DataConfig
    from shadowft.data import prepare_dataset

    rows = [
        {"messages": [{"role": "user", "content": f"{a}+1?"}, {"role": "assistant", "content": str(a + 1)}]}
        for a in range(8)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prepare_dataset(
        DataConfig(sources=[str(tmp_path / "d.jsonl")], max_length=64), llama_trio["instruct"], tmp_path / "p"
    )
    return tmp_path / "p"


def test_setup_resolves_the_job_without_loading_a_model(llama_trio, prepared, tmp_path):
    spec = TrainConfig(max_steps=2, batch_size=4, grad_accum=1)
    job = setup(llama_trio["base"], prepared, spec, tmp_path / "out", tmp_path / "work")
    assert job.resume is None and job.device == "cpu" and job.precision == "fp32"
    assert json.loads((tmp_path / "work" / "job.json").read_text())["spec"]["objective"] == "sft"
    assert TrainJob.from_json(json.loads(json.dumps(job.to_json()))) == job  # what a launched rank reads
    assert not (tmp_path / "out").exists()


def test_setup_checks_the_objective_columns(llama_trio, prepared, tmp_path):
    from datasets import load_from_disk

    ds = load_from_disk(str(prepared / "dataset")).remove_columns(["labels"])
    bad = tmp_path / "bad"
    ds.save_to_disk(str(bad / "dataset"))
    (bad / "stats.json").write_text((prepared / "stats.json").read_text())
    with pytest.raises(ShadowFTError, match="lacks the column.*labels.*'sft' objective"):
        setup(llama_trio["base"], bad, TrainConfig(), tmp_path / "out", tmp_path / "work")


def test_unknown_launcher_fails_before_training(llama_trio, prepared, tmp_path):
    with pytest.raises(ShadowFTError, match="unknown launcher 'mpi'"):
        train_model(
            llama_trio["base"], prepared, TrainConfig(max_steps=1), tmp_path / "o", tmp_path / "w", launcher="mpi"
        )
    assert not (tmp_path / "o").exists()
