"""Issue 12 in one process: launch plans, preflight of engine configs, threads, packing, tensorboard."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from shadowft.config import DataConfig, RunConfig, TrainConfig, load_config
from shadowft.errors import ShadowFTError
from shadowft.threads import SMALL_MODEL_PARAMS, resolve_threads
from shadowft.train import train_model
from shadowft.train.launchers.accelerate import CONFIG_DIR, check_accelerate_config
from shadowft.train.resources import resolve_launch

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def test_launch_plan_from_the_train_section():
    one = resolve_launch(TrainConfig(), gpus=0)
    assert (one.launcher, one.distributed, one.world_size, one.device) == ("inprocess", "none", 1, "cpu")
    two = resolve_launch(TrainConfig(num_processes=2), gpus=0)
    assert (two.launcher, two.distributed, two.world_size) == ("torchrun", "ddp", 2)
    eight = resolve_launch(TrainConfig(), gpus=8)  # default: one process per visible GPU
    assert (eight.launcher, eight.distributed, eight.num_processes, eight.device) == ("torchrun", "ddp", 8, "cuda")
    assert eight.global_batch(TrainConfig(batch_size=4, grad_accum=8)) == 4 * 8 * 8
    nodes = resolve_launch(TrainConfig(num_nodes=2, node_rank=1, num_processes=8), gpus=8)
    assert nodes.world_size == 16 and nodes.node_rank == 1
    zero3 = resolve_launch(TrainConfig(distributed="deepspeed"), gpus=8)
    assert zero3.launcher == "accelerate" and zero3.settings == {"config": str(CONFIG_DIR / "deepspeed_zero3.yaml")}


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(distributed="none", num_processes=2), "distributed=none with 2 processes"),
        (dict(distributed="fsdp"), "needs CUDA GPUs"),
        (dict(launcher="inprocess", num_processes=2), "inprocess cannot run 2"),
    ],
)
def test_launch_settings_that_cannot_run_are_refused(fields, match):
    with pytest.raises(ShadowFTError, match=match) as err:
        resolve_launch(TrainConfig(**fields), gpus=0)
    assert err.value.hint


def test_node_rank_beyond_num_nodes_is_refused_by_the_config_before_any_launch():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"node_rank[\s\S]*must be less than train.num_nodes \(2\)"):
        TrainConfig(num_nodes=2, node_rank=2)


def test_new_train_fields_are_documented_and_rendezvous_is_not_in_the_key():
    for name in (
        "distributed",
        "num_processes",
        "num_nodes",
        "node_rank",
        "main_address",
        "main_port",
        "threads",
        "accelerate",
        "report_to",
        "attn_implementation",
        "launcher",
    ):
        assert TrainConfig.model_fields[name].description, name
    assert "num_processes x num_nodes" in TrainConfig.model_fields["distributed"].description
    a = load_config(None, ["train.node_rank=0", "train.main_port=1234"]).train.cache_view()
    b = load_config(None, ["train.num_nodes=2", "train.node_rank=1", "train.main_address=10.0.0.1"]).train.cache_view()
    assert {k: v for k, v in a.items() if k != "num_nodes"} == {k: v for k, v in b.items() if k != "num_nodes"}
    assert "report_to" not in a and "num_processes" in a and "threads" in a
    assert RunConfig().data.cache_view()["packing"] is False


def test_shipped_engine_configs_pass_accelerate_validation():
    """Each shipped config goes through accelerate's own launch validation for the GPU plan it serves
    (it runs on this CPU machine: only the launch itself needs the GPUs)."""
    for dist in ("ddp", "fsdp"):
        check_accelerate_config(resolve_launch(TrainConfig(distributed=dist, launcher="accelerate"), gpus=8))
    zero3 = resolve_launch(TrainConfig(distributed="deepspeed"), gpus=8)
    if HAS_DEEPSPEED:  # a GPU machine with the engine (as the README recommends): the config passes
        check_accelerate_config(zero3)
        return
    # ZeRO-3's config is valid too; what stops it here is the missing engine, said before any model loads
    with pytest.raises(ShadowFTError, match="needs the `deepspeed` package"):
        check_accelerate_config(zero3)


def test_a_config_accelerate_refuses_fails_before_launch(tmp_path):
    bad = tmp_path / "fsdp.yaml"
    bad.write_text((CONFIG_DIR / "fsdp.yaml").read_text() + "fsdp_shard_everything_twice: true\n")
    with pytest.raises(ShadowFTError, match="accelerate refuses the config"):
        check_accelerate_config(
            resolve_launch(TrainConfig(distributed="fsdp", accelerate={"config": str(bad)}), gpus=8)
        )
    with pytest.raises(ShadowFTError, match="sets distributed_type DEEPSPEED, but train.distributed is fsdp"):
        cfg = str(CONFIG_DIR / "deepspeed_zero3.yaml")
        check_accelerate_config(resolve_launch(TrainConfig(distributed="fsdp", accelerate={"config": cfg}), gpus=8))
    with pytest.raises(ShadowFTError, match="no such file"):
        check_accelerate_config(resolve_launch(TrainConfig(accelerate={"config": str(tmp_path / "nope.yaml")}), gpus=8))


def test_threads_default_does_not_depend_on_load():
    assert resolve_threads(None, 1_000_000) == 1  # small models: one thread per process
    big = resolve_threads(None, SMALL_MODEL_PARAMS * 10, local_processes=1)
    assert big >= 1 and resolve_threads(None, SMALL_MODEL_PARAMS * 10, local_processes=64) == 1
    assert resolve_threads(3, 1_000_000) == 3


@pytest.fixture
def prepared(llama_trio, tmp_path):
    from shadowft.data import prepare_dataset

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"what is {a} plus one?" + " please" * (a % 3)},
                {"role": "assistant", "content": str(a + 1) * (1 + a % 4)},
            ]
        }
        for a in range(8)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def make(packing: bool) -> Path:
        out = tmp_path / f"p{int(packing)}"
        if out.exists():
            return out
        prepare_dataset(
            DataConfig(sources=[str(tmp_path / "d.jsonl")], max_length=64, packing=packing), llama_trio["instruct"], out
        )
        return out

    return make


def test_packed_batch_gives_the_padded_batch_loss(llama_trio, prepared):
    """The same conversations, padded in rows or packed end to end in one row: the same loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from shadowft.data import load_prepared
    from shadowft.train.objectives.sft import PadCollator, packed_collator

    features = [dict(r) for r in load_prepared(prepared(False)).select(range(4))]
    assert len({len(f["input_ids"]) for f in features}) > 1  # padding is really needed
    model = AutoModelForCausalLM.from_pretrained(str(llama_trio["base"]), attn_implementation="sdpa").eval()
    padded, packed = PadCollator(0)(features), packed_collator()(features)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        a, b = model(**padded).loss, model(**packed, use_cache=False).loss
    assert abs(float(a) - float(b)) < 1e-5, (float(a), float(b))
    # with a cache (the model's default) the position-id masks are skipped: conversations would see each
    # other; the fit phase turns the cache off when packing
    with torch.no_grad():
        mixed = model(**packed).loss
    assert abs(float(mixed) - float(a)) > 1e-4


def test_packed_training_matches_unpacked_and_is_recorded(llama_trio, prepared, tmp_path):
    s = TrainConfig(max_steps=3, batch_size=4, grad_accum=1, lr=1e-3)
    plain = train_model(llama_trio["base"], prepared(False), s, tmp_path / "o0", tmp_path / "w0")
    packed = train_model(llama_trio["base"], prepared(True), s, tmp_path / "o1", tmp_path / "w1")
    assert packed.packing and not plain.packing
    for x, y in zip(plain.loss_curve, packed.loss_curve, strict=True):
        assert abs(x["loss"] - y["loss"]) < 1e-4, (plain.loss_curve, packed.loss_curve)
    assert json.loads((tmp_path / "o1" / "train_result.json").read_text())["packing"] is True


def test_packing_is_refused_where_the_model_does_not_mask_by_position_ids():
    import transformers

    from shadowft.train.fit import check_packing

    for cls in ("BloomForCausalLM", "CodeGenForCausalLM"):  # real classes without the attention interface
        model = object.__new__(getattr(transformers, cls))
        with pytest.raises(ShadowFTError, match=f"data.packing: {cls} with attention sdpa cannot") as err:
            check_packing(model, "sdpa")
        assert "data.packing=false" in err.value.hint
    check_packing(object.__new__(transformers.LlamaForCausalLM), "sdpa")
    check_packing(object.__new__(transformers.Qwen3ForCausalLM), "eager")


def test_tensorboard_writes_event_files(llama_trio, prepared, tmp_path):
    s = TrainConfig(max_steps=2, batch_size=4, grad_accum=1, report_to="tensorboard")
    r = train_model(llama_trio["base"], prepared(False), s, tmp_path / "o", tmp_path / "w")
    events = list((tmp_path / "w" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and r.report_to == "tensorboard"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 2


def test_threads_recorded_and_weights_reproducible(llama_trio, prepared, tmp_path):
    from safetensors.torch import load_file

    s = TrainConfig(max_steps=2, batch_size=4, grad_accum=1)
    a = train_model(llama_trio["base"], prepared(False), s, tmp_path / "a", tmp_path / "wa")
    b = train_model(llama_trio["base"], prepared(False), s, tmp_path / "b", tmp_path / "wb")
    assert a.threads == b.threads == 1
    wa, wb = (load_file(str(p / "adapter_model.safetensors")) for p in (tmp_path / "a", tmp_path / "b"))
    assert all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_fails_before_training(llama_trio, prepared, tmp_path, tracker):
    from shadowft.train.preflight import check_tracker

    check_tracker("tensorboard")  # installed here (the `tensorboard` extra)
    check_tracker("none")
    if importlib.util.find_spec(tracker) is not None:
        check_tracker(tracker)  # installed: accepted
        pytest.skip(f"{tracker} is installed here, so its refusal cannot be shown (the other tracker's case may)")
    with pytest.raises(ShadowFTError, match=f"report_to={tracker} needs the `{tracker}` package") as err:
        train_model(
            llama_trio["base"],
            prepared(False),
            TrainConfig(max_steps=1, report_to=tracker),
            tmp_path / "o",
            tmp_path / "w",
        )
    assert "report_to=none" in err.value.hint and not (tmp_path / "o").exists()


def test_run_preflight_refuses_a_launch_that_cannot_run_before_any_stage():
    from shadowft.stages import preflight

    preflight(load_config(None, ["train.num_processes=2"]))  # DDP over gloo runs on CPU
    with pytest.raises(ShadowFTError, match="train.distributed=fsdp needs CUDA GPUs"):
        preflight(load_config(None, ["train.distributed=fsdp"]))
    with pytest.raises(ShadowFTError, match="accelerate launch starts several CPU processes only through MPI"):
        preflight(load_config(None, ["train.num_processes=2", "train.launcher=accelerate"]))
