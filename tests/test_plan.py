"""`shadowft plan` and the memory preflight: the estimate, the refusal with settings that fit, the CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from shadowft.cli import app
from shadowft.errors import ShadowFTError
from shadowft.plan import GiB, check_fit, estimate, model_shape, sizing_table


def test_known_models_have_their_published_sizes():
    # parameter counts as published (Qwen3-4B 4.02B, Qwen3-8B 8.19B, Llama-3.1-8B 8.03B)
    assert round(model_shape("Qwen/Qwen3-4B-Base").params / 1e9, 2) == 4.02
    assert round(model_shape("Qwen/Qwen3-8B").params / 1e9, 2) == 8.19
    assert round(model_shape("meta-llama/Llama-3.1-8B-Instruct").params / 1e9, 2) == 8.03
    # LoRA r=8 on all projections of Llama-3.1-8B: 20,971,520 parameters (PEFT's count)
    assert (
        model_shape("meta-llama/Llama-3.1-8B").lora_params(
            8, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )
        == 20_971_520
    )


def test_local_model_dir_is_sized_from_its_config(llama_trio):
    from transformers import AutoModelForCausalLM

    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(llama_trio["base"])).parameters())
    assert model_shape(llama_trio["base"]).params == real


def test_full_8b_on_one_gpu_is_refused_with_settings_that_fit():
    kw = dict(model="Qwen/Qwen3-8B", precision="bf16", batch_size=1, seq_len=4096, device_bytes=80 * GiB)
    shape = model_shape("Qwen/Qwen3-8B")
    one = estimate(shape, method="full", distributed="none", world_size=1, gradient_checkpointing=False, **kw)
    assert one.weights + one.gradients + one.optimizer == 16 * shape.params and not one.fits
    with pytest.raises(ShadowFTError, match=r"needs about 1\d\d\.\d GiB per device \(estimate\)") as err:
        check_fit(one)
    assert "8 x cuda, deepspeed" in err.value.hint and "lora" in err.value.hint
    zero3 = estimate(shape, method="full", distributed="deepspeed", world_size=8, gradient_checkpointing=False, **kw)
    assert zero3.optimizer == one.optimizer / 8 and zero3.fits
    check_fit(zero3)


def test_sizing_table_covers_the_papers_setups():
    table = sizing_table()
    for name in ("Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "meta-llama/Llama-3.1-8B"):
        assert f"| {name} | lora | 1 |" in table and f"| {name} | full | 8 | ZeRO-3 | " in table


def test_plan_command_prints_the_estimate_and_refuses_what_cannot_fit():
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", "--set", "train.num_processes=2"])
    assert ok.exit_code == 0, ok.output
    assert "torchrun: ddp, 1 node(s) x 2 process(es) = world size 2" in ok.output and "fits" in ok.output
    assert "global batch 64" in ok.output  # 4 x 8 x 2
    big = [
        "plan",
        "--set",
        "pair.base=Qwen/Qwen3-8B-Base",
        "--set",
        "pair.instruct=Qwen/Qwen3-8B",
        "--set",
        "train.method=full",
        "--set",
        "train.batch_size=1",
        "--set",
        "data.max_length=4096",
        "--gpus",
        "8",
    ]
    res = runner.invoke(app, big)
    assert "does NOT fit" in res.output and isinstance(res.exception, ShadowFTError)
    assert "deepspeed" in res.exception.hint
    fits = runner.invoke(app, [*big, "--set", "train.distributed=deepspeed"])
    assert fits.exit_code == 0 and "fits" in fits.output, fits.output


def test_a_plan_that_does_not_fit_this_machine_says_how_to_plan_for_gpus():
    """Without --gpus the plan is for this machine's devices (a CPU box: its memory); the hint says so
    and gives the options that plan for GPUs (issue 26)."""
    res = CliRunner().invoke(app, ["plan", "examples/qwen3-4b-lora.yaml"])
    assert "does NOT fit" in res.output and isinstance(res.exception, ShadowFTError)
    hint = res.exception.hint
    assert "This plan is for this machine" in hint and "--gpus 8 --gpu-memory 80" in hint, hint
    assert "shadowft plan examples/qwen3-4b-lora.yaml --gpus" in hint and "prints the estimate" not in hint
    told = CliRunner().invoke(app, ["plan", "examples/qwen3-4b-lora.yaml", "--gpus", "1", "--gpu-memory", "16"])
    assert isinstance(told.exception, ShadowFTError) and "this machine" not in told.exception.hint


@pytest.mark.parametrize("arch", ["gemma3", "llava"])
def test_a_vlm_is_sized_to_the_parameter_from_its_config(arch: str, tmp_path) -> None:
    """The vision tower and projector are counted: the estimate equals the real model's count."""
    from transformers import AutoModelForImageTextToText

    from shadowft.tiny_vlm import make_vlm_trio

    base = make_vlm_trio(tmp_path, arch)["base"]
    model = AutoModelForImageTextToText.from_pretrained(base)
    shape = model_shape(base)
    assert shape.params == sum(p.numel() for p in model.parameters())
    tower = sum(
        p.numel() for n, p in model.named_parameters() if ".vision_tower." in n or ".multi_modal_projector." in n
    )
    assert shape.vision_params == tower


def test_gemma3_sizes_match_the_published_parameter_counts() -> None:
    # google/gemma-3-{4b,12b,27b}-it model cards: 4,300,079,472 / 12,187,325,040 / 27,432,406,640 parameters
    assert model_shape("google/gemma-3-4b-it").params == 4_300_079_472
    assert model_shape("google/gemma-3-12b-pt").params == 12_187_325_040
    assert model_shape("google/gemma-3-27b-it").params == 27_432_406_640
    shape = model_shape("google/gemma-3-4b-pt")
    kw = dict(model="g", precision="bf16", distributed="none", world_size=1, batch_size=1, seq_len=4096)
    frozen = estimate(shape, method="full", gradient_checkpointing=True, **kw)
    trained = estimate(shape, method="full", gradient_checkpointing=True, train_vision=True, **kw)
    assert frozen.trainable == shape.params - shape.vision_params  # the tower is held, not trained
    assert trained.optimizer - frozen.optimizer == 8 * shape.vision_params
    assert trained.activations > frozen.activations
    assert "| google/gemma-3-27b | lora | 1 |" in sizing_table()
