"""Training a vision-language model (tiny Gemma-3 and Llava): the collator feeds the images, LoRA adapts
the language model only, full fine-tuning leaves a frozen vision tower and projector bit-identical, and
the trained model keeps its processor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shadowft.config import DataConfig, TrainConfig
from shadowft.data import load_prepared, prepare_dataset
from shadowft.errors import ShadowFTError
from shadowft.modality import checkpoint_parts, module_parts
from shadowft.train import train_model
from shadowft.train.methods import get_method
from shadowft.train.objectives import get_objective
from shadowft.vlm_data import VisionCollator, load_processor

FAST = {"max_steps": 3, "batch_size": 2, "grad_accum": 1, "save_steps": 100, "lr": 1e-3}
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> Path:
    """Coloured squares and their names, as LLaMA-Factory rows (images relative to the data file)."""
    root = tmp_path_factory.mktemp("vlm-train-data")
    (root / "img").mkdir()
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (20, 20), rgb).save(root / "img" / f"{name}.png")
        msgs = [{"role": "user", "content": "<image>Which colour?"}, {"role": "assistant", "content": name}]
        rows.append({"messages": msgs, "images": [f"img/{name}.png"]})
    (root / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "d.jsonl"


def _prepare(trio: dict[str, Path], src: Path, out: Path) -> Path:
    prepare_dataset(DataConfig(sources=[str(src)], max_length=128), trio["instruct"], out)
    return out


def test_collator_feeds_the_images_to_the_model(gemma3_vlm_trio, colour_data, tmp_path):
    """Pixel values for every image of the batch, Gemma-3's token_type_ids at the image tokens, and the
    loss depends on the pixels (the images reach the model)."""
    from transformers import AutoModelForImageTextToText

    data = _prepare(gemma3_vlm_trio, colour_data, tmp_path / "p")
    processor = load_processor(data / "tokenizer")
    collator = get_objective("sft").collator(processor, "cpu")
    assert isinstance(collator, VisionCollator)
    rows = [load_prepared(data)[i] for i in (0, 2)]
    batch = collator(rows)
    assert tuple(batch["pixel_values"].shape) == (2, 3, 32, 32)
    soft = processor.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert torch.equal(batch["token_type_ids"], (batch["input_ids"] == soft).long())
    assert int(batch["token_type_ids"].sum()) == 8
    model = AutoModelForImageTextToText.from_pretrained(gemma3_vlm_trio["base"]).eval()
    with torch.no_grad():
        # Gemma-3 initialises its projection to zeros (the tiny trio keeps them): give it weights
        torch.manual_seed(0)
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.5)
        loss = model(**batch).loss
        swapped = collator([{**rows[0], "images": rows[1]["images"]}, {**rows[1], "images": rows[0]["images"]}])
        assert torch.equal(swapped["input_ids"], batch["input_ids"])
        assert not torch.equal(model(**swapped).loss, loss)


def test_gemma3_lora_adapts_only_the_language_model(gemma3_vlm_trio, colour_data, tmp_path):
    data = _prepare(gemma3_vlm_trio, colour_data, tmp_path / "p")
    res = train_model(gemma3_vlm_trio["base"], data, TrainConfig(method="lora", **FAST), tmp_path / "o", tmp_path / "w")
    assert res.global_step == 3
    adapter = load_file(tmp_path / "o" / "adapter_model.safetensors")
    modules = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in adapter}
    parts = checkpoint_parts(gemma3_vlm_trio["base"])
    assert {parts.role(m) for m in modules} == {"language_model"}
    assert len(modules) == 2 * 7  # every projection of both decoder layers
    # grafted onto Instruct: a model dir with Instruct's processor
    from transformers import AutoProcessor

    from shadowft.graft import graft

    graft(gemma3_vlm_trio["instruct"], tmp_path / "g", alpha=1.0, adapter=tmp_path / "o")
    assert type(AutoProcessor.from_pretrained(tmp_path / "g")).__name__ == "Gemma3Processor"
    # an unfrozen vision tower gets adapters too; Gemma-3's projector has no linear layer to adapt
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(gemma3_vlm_trio["base"])
    peft = get_method("lora").prepare(model, TrainConfig(method="lora", freeze_vision_tower=False))
    roles = {
        module_parts(model).role(n.removeprefix("base_model.model."))
        for n, p in peft.named_parameters()
        if p.requires_grad
    }
    assert roles == {"language_model", "vision_tower"}
    with pytest.raises(ShadowFTError, match="projector .* has no linear layers"):
        get_method("lora").prepare(
            AutoModelForImageTextToText.from_pretrained(gemma3_vlm_trio["base"]),
            TrainConfig(method="lora", freeze_projector=False),
        )


def test_llava_full_ft_keeps_the_frozen_tower_and_projector(llava_vlm_trio, colour_data, tmp_path):
    from transformers import AutoProcessor

    data = _prepare(llava_vlm_trio, colour_data, tmp_path / "p")
    res = train_model(llava_vlm_trio["base"], data, TrainConfig(method="full", **FAST), tmp_path / "o", tmp_path / "w")
    base = load_file(llava_vlm_trio["base"] / "model.safetensors")
    tuned = load_file(tmp_path / "o" / "model.safetensors")
    assert set(base) == set(tuned)
    parts = checkpoint_parts(llava_vlm_trio["base"])
    changed = {parts.role(k) for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == {"language_model", "lm_head"}
    frozen = sum(base[k].numel() for k in base if parts.role(k) in ("vision_tower", "projector"))
    assert res.trainable_params == res.total_params - frozen
    assert type(AutoProcessor.from_pretrained(tmp_path / "o")).__name__ == "LlavaProcessor"  # saved with the model


def test_full_ft_resumes_from_its_checkpoint_exactly(gemma3_vlm_trio, colour_data, tmp_path):
    """A VLM's checkpoints hold its files' tensor names (transformers saves the original format): a
    resumed run must load them (not go on from the weights it started with) and end bitwise as an
    uninterrupted one."""

    class Crash(Exception):
        pass

    def crash(event: dict) -> None:
        if event["event"] == "step" and event["step"] == 3:
            raise Crash

    data = _prepare(gemma3_vlm_trio, colour_data, tmp_path / "p")
    spec = TrainConfig(method="full", **{**FAST, "max_steps": 4, "save_steps": 2})
    with pytest.raises(Crash):
        train_model(gemma3_vlm_trio["base"], data, spec, tmp_path / "o", tmp_path / "w", progress=crash)
    res = train_model(gemma3_vlm_trio["base"], data, spec, tmp_path / "o", tmp_path / "w")
    assert (res.resumed_from, res.global_step) == ("checkpoint-2", 4)
    ref = train_model(gemma3_vlm_trio["base"], data, spec, tmp_path / "ref", tmp_path / "ref-w")
    assert [c["loss"] for c in ref.loss_curve] == [c["loss"] for c in res.loss_curve]
    a, b = load_file(tmp_path / "o" / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dpo_with_images_trains_the_language_model(gemma3_vlm_trio, colour_data, tmp_path):
    """Preference pairs whose prompts hold images (TRL's content parts, LLaMA-Factory's placeholders):
    prepared with the image markers and the images' bytes, trained by TRL's DPOTrainer with the
    processor; a prompt whose images do not match is refused with file and line."""
    from datasets import load_from_disk

    def pair(content, chosen: str, rejected: str, images: list[str]) -> dict:
        return {
            "prompt": [{"role": "user", "content": content}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "images": images,
        }

    rows = [
        pair([{"type": "image"}, {"type": "text", "text": "Which colour?"}], "red", "blue", ["img/red.png"]),
        pair("<image>Which colour?", "blue", "red", ["img/blue.png"]),
        pair("<image>Which colour?", "green", "white", ["img/green.png"]),
    ]
    src = colour_data.parent / "pref.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = tmp_path / "p"
    dpo = get_objective("dpo")
    dpo.prepare_data(DataConfig(sources=[str(src)], max_length=128), gemma3_vlm_trio["instruct"], data)
    ds = load_from_disk(str(data / "dataset"))
    assert ds[0]["prompt"].count("<start_of_image>") == 1 and ds[0]["chosen"].startswith("red")
    assert [len(x) for x in ds["images"]] == [1, 1, 1]
    spec = TrainConfig(objective="dpo", method="lora", max_steps=2, batch_size=2, save_steps=100, lr=1e-3)
    res = train_model(gemma3_vlm_trio["base"], data, spec, tmp_path / "o", tmp_path / "w")
    assert res.global_step == 2
    adapter = load_file(tmp_path / "o" / "adapter_model.safetensors")
    parts = checkpoint_parts(gemma3_vlm_trio["base"])
    assert {parts.role(k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]) for k in adapter} == {
        "language_model"
    }
    bad = colour_data.parent / "bad-pref.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "images": []}) + "\n")
    with pytest.raises(ShadowFTError, match=f"{bad} line 2: the prompt has 1 <image> placeholder"):
        dpo.prepare_data(DataConfig(sources=[str(bad)]), gemma3_vlm_trio["instruct"], tmp_path / "bad")


@pytest.mark.slow
def test_torchrun_ddp_trains_an_unfrozen_tower_on_mixed_batches(llava_vlm_trio, colour_data, tmp_path):
    """Two ranks (torchrun): with the vision tower trained, a rank whose batch holds no image gives the
    tower no gradients; with activation checkpointing transformers would not let DDP expect that
    (it failed: "Parameter indices which did not receive grad")."""
    from tests.helpers import free_port

    text = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]} for w in "ab"]
    src = colour_data.parent / "mixed.jsonl"
    rows = [json.loads(x) for x in colour_data.read_text().splitlines()[:2]] + text
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = _prepare(llava_vlm_trio, src, tmp_path / "p")
    spec = TrainConfig(
        method="full",
        freeze_vision_tower=False,
        gradient_checkpointing=True,
        max_steps=2,
        batch_size=1,
        save_steps=100,
        num_processes=2,
        main_port=free_port(),
    )
    res = train_model(llava_vlm_trio["base"], data, spec, tmp_path / "o", tmp_path / "w")
    assert (res.launcher, res.world_size, res.global_step) == ("torchrun", 2, 2)
    base = load_file(llava_vlm_trio["base"] / "model.safetensors")
    tuned = load_file(tmp_path / "o" / "model.safetensors")
    parts = checkpoint_parts(llava_vlm_trio["base"])
    changed = {parts.role(k) for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == {"vision_tower", "language_model", "lm_head"}  # the projector stays frozen
