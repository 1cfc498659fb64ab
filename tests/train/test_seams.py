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
    assert isinstance(get_objective("sft"), SFT) and set(OBJECTIVES) == {"sft", "dpo", "kto", "grpo"}
    assert all(issubclass(o, Objective) for o in OBJECTIVES.values())
    with pytest.raises(ShadowFTError, match="unknown objective 'ppo'") as err:
        get_objective("ppo")
    assert "sft" in err.value.hint and "dpo" in err.value.hint


def test_launcher_registry():
    assert get_launcher().name == "inprocess"
    assert set(LAUNCHERS) == {"inprocess", "torchrun", "accelerate", "ray-train"}
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
    assert RunConfig().train.cache_view()["objective"] == "sft"
    # the method's own fields still decide the key as before: other methods' fields are left out
    lora, full = RunConfig().train.cache_view(), load_config(None, ["train.method=full"]).train.cache_view()
    assert "full_save_dtype" not in lora and "lora_rank" in lora
    assert "lora_rank" not in full and full["full_save_dtype"] == "fp32"
    with pytest.raises(
        ShadowFTError, match=r"train\.objective: unknown objective 'ppo'.*known objectives: dpo, grpo, kto, sft"
    ):
        load_config(None, ["train.objective=ppo"])
    enum = TrainConfig.model_json_schema()["properties"]["objective"]["enum"]
    assert enum == ["sft", "dpo", "kto", "grpo"]  # UI dropdown
    # objective settings are the objective's sub-section, in its own key only (SFT keys do not move)
    assert "dpo" not in lora and "kto" not in lora
    dpo = load_config(None, ["train.objective=dpo", "train.dpo.beta=0.2"]).train.cache_view()
    assert dpo["dpo"] == {"beta": 0.2, "loss": "sigmoid"} and dpo["lr"] == 5e-6 and "kto" not in dpo


@pytest.mark.parametrize(("old", "new"), [("dpo_beta=0.2", "train.dpo.beta"), ("dpo_loss=ipo", "train.dpo.loss")])
def test_the_old_dpo_spelling_fails_with_the_new_one(old, new):
    with pytest.raises(ShadowFTError, match=rf"train\.{old.split('=')[0]} is now {new}"):
        load_config(None, ["train.objective=dpo", f"train.{old}"])


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


# -- the objective seam: a new objective is one class + one registry entry ---------------------------


class ToyStats:
    """What the toy objective's data hook returns (the counts the data stage records)."""

    def __init__(self, samples: int, tokens: int) -> None:
        self.samples, self.tokens, self.dropped, self.truncated = samples, tokens, 0, 0


class ToyLM(Objective):
    """Causal LM on plain text rows ({"text": ...}): every token is trained, no chat template."""

    name = "toy"
    summary = "plain-text language modelling (a test's objective)"
    default_lr = {"lora": 3e-3, "full": 3e-4}
    columns = ("input_ids", "labels")

    def prepare_data(self, data, tokenizer_dir, out_dir):
        from datasets import Dataset
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        texts = [json.loads(line)["text"] for s in data.sources for line in open(s) if line.strip()]
        ids = [tok(t)["input_ids"][: data.max_length] for t in texts]
        out_dir.mkdir(parents=True)
        Dataset.from_dict({"input_ids": ids, "labels": ids}).save_to_disk(str(out_dir / "dataset"))
        tok.save_pretrained(str(out_dir / "tokenizer"))
        (out_dir / "stats.json").write_text(
            json.dumps({"samples": len(ids), "longest": max(map(len, ids)), "max_length": data.max_length})
        )
        return ToyStats(len(ids), sum(map(len, ids)))

    def collator(self, tokenizer, device):
        return PadCollator(pad_id=0)


def test_a_toy_objective_runs_through_the_data_and_train_stages(llama_trio, tmp_path, monkeypatch):
    from shadowft.stages import data_spec, run, train_spec
    from shadowft.store import ArtifactStore

    monkeypatch.setitem(OBJECTIVES, "toy", ToyLM)
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"text": f"{a} plus one is {a + 1}"}) + "\n" for a in range(8)))
    config = load_config(None, ["train.objective=toy", f"data.sources=['{src}']", "data.max_length=32"])
    assert (
        config.train.effective_lr == 3e-3
        and "toy" in TrainConfig.model_json_schema()["properties"]["objective"]["enum"]
    )
    store = ArtifactStore(tmp_path / "store")

    data, built = run(data_spec(config.data, llama_trio["instruct"], config.train.objective), store)
    assert built and store.manifest("data", data.key)["config"]["objective"] == "toy"  # its own key
    assert store.manifest("data", data.key)["samples"] == 8
    sft = data_spec(config.data, llama_trio["instruct"], "sft")
    assert sft.key != data.key and sft.config == config.data.cache_view()  # SFT's key predates objectives

    train = config.train.model_copy(update={"max_steps": 2, "batch_size": 4, "grad_accum": 1})
    trained, _ = run(train_spec(train, llama_trio["base"], data, store), store)
    result = store.manifest("train", trained.key)["train"]
    assert result["objective"] == "toy" and result["lr"] == 3e-3 and result["global_step"] == 2
    assert len(json.loads((trained.path / "loss_curve.json").read_text())) == 2
