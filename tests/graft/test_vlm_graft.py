"""Vision-language pairs: roles from the model's structure, per-part sigma, and a graft that touches the
language model only (the vision tower and projector come from Instruct) unless the scope says otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shadowft.graft import graft
from shadowft.modality import checkpoint_parts, is_multimodal, role_counts
from shadowft.pair import check_pair
from shadowft.scope import PROJECTIONS, scope_for


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("trio_name", ["gemma3_vlm_trio", "llava_vlm_trio"])
def test_every_tensor_gets_its_role_from_the_model_structure(trio_name: str, request: pytest.FixtureRequest) -> None:
    trio = request.getfixturevalue(trio_name)
    assert is_multimodal(trio["base"])
    parts = checkpoint_parts(trio["base"])
    names = list(_tensors(trio["base"]))
    roles = parts.roles(names)
    counts = role_counts(parts, names)
    assert counts["vision_tower"] > 0 and counts["projector"] > 0 and counts["language_model"] > 0
    # the structure, not a name pattern: the tower's own q/k/v projections are the tower's
    modules = {n: parts.module_name(n) for n in names}  # files in either spelling: the loaded model's names
    assert all(r == "vision_tower" for n, r in roles.items() if modules[n].startswith("model.vision_tower."))
    assert any("q_proj" in n for n, r in roles.items() if r == "vision_tower")
    assert all(r == "language_model" for n, r in roles.items() if modules[n].startswith("model.language_model."))


def test_checkpoint_files_in_either_spelling_get_the_same_roles(gemma3_vlm_trio) -> None:
    """transformers writes these files as `language_model.model.layers...` (as Gemma-3's hub files) and
    names the modules `model.language_model.layers...`; its own renaming rules map one to the other."""
    parts = checkpoint_parts(gemma3_vlm_trio["base"])
    assert parts.role("language_model.model.layers.0.self_attn.q_proj.weight") == "language_model"
    assert parts.role("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight") == "vision_tower"
    assert parts.role("multi_modal_projector.mm_input_projection_weight") == "projector"
    assert parts.role("model.language_model.layers.0.self_attn.q_proj.weight") == "language_model"
    assert parts.role("model.vision_tower.encoder.layers.0.self_attn.q_proj.weight") == "vision_tower"
    pattern = scope_for("projections", gemma3_vlm_trio["base"])
    assert pattern.search("language_model.model.layers.0.mlp.down_proj.weight")
    assert not pattern.search("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight")


def test_pair_check_reports_sigma_per_part_and_the_language_models_as_the_verdict(llava_vlm_trio) -> None:
    report = check_pair(llava_vlm_trio["base"], llava_vlm_trio["instruct"])
    assert report.ok and report.sigma is not None
    by_role = report.sigma.by_role
    assert set(by_role) == {"vision_tower", "projector", "language_model", "lm_head"}
    parts = checkpoint_parts(llava_vlm_trio["base"])
    lm_layers = [v for n, v in report.sigma.tensors.items() if parts.role(n) == "language_model" and ".layers." in n]
    assert report.sigma.mean == pytest.approx(sum(lm_layers) / len(lm_layers))
    said = " ".join(report.warnings)
    assert "vision tower differs between base and instruct" in said and "copied from instruct" in said
    assert "projector differs" in said


def test_a_vlm_graft_changes_the_language_models_projections_only(llava_vlm_trio, tmp_path: Path) -> None:
    out = tmp_path / "grafted"
    report = graft(
        llava_vlm_trio["instruct"], out, base=llava_vlm_trio["base"], tuned=llava_vlm_trio["tuned"], alpha=1.0
    )
    base, tuned, instruct, got = (
        _tensors(llava_vlm_trio["base"]),
        _tensors(llava_vlm_trio["tuned"]),
        _tensors(llava_vlm_trio["instruct"]),
        _tensors(out),
    )
    parts = checkpoint_parts(llava_vlm_trio["instruct"])
    grafted = [n for n in got if not torch.equal(got[n], instruct[n])]
    assert grafted and report.grafted == len(grafted)
    assert {parts.role(n) for n in grafted} == {"language_model"}
    assert all(any(p in n for p in PROJECTIONS) for n in grafted)
    n = next(k for k in grafted if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert torch.allclose(got[n], instruct[n] + (tuned[n] - base[n]), atol=1e-6)
    # the vision tower's own q_proj (same name pattern) is Instruct's, bit for bit
    tower_q = next(k for k in got if parts.role(k) == "vision_tower" and "q_proj" in k)
    assert torch.equal(got[tower_q], instruct[tower_q])
    # the grafted dir is a complete VLM: processor and model load, and it answers about an image
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[[Image.new("RGB", (32, 32), (200, 0, 0))]], return_tensors="pt")
    assert model.generate(**batch, max_new_tokens=2, do_sample=False).shape[1] > batch["input_ids"].shape[1]


def test_scope_all_grafts_the_vision_tower_too(gemma3_vlm_trio, tmp_path: Path) -> None:
    out = tmp_path / "all"
    graft(gemma3_vlm_trio["instruct"], out, base=gemma3_vlm_trio["base"], tuned=gemma3_vlm_trio["tuned"], scope="all")
    got, instruct = _tensors(out), _tensors(gemma3_vlm_trio["instruct"])
    parts = checkpoint_parts(gemma3_vlm_trio["instruct"])
    changed = {parts.role(n) for n in got if not torch.equal(got[n], instruct[n])}
    assert {"vision_tower", "projector", "language_model"} <= changed


def test_a_lora_adapter_trained_on_the_vlm_base_grafts_as_peft_merges_it(gemma3_vlm_trio, tmp_path: Path) -> None:
    """LoRA on the language model of the Base VLM, applied to Instruct: equal to PEFT's own merge."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(gemma3_vlm_trio["base"])
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=r"model\.language_model\..*\.(q_proj|v_proj)", init_lora_weights=False
    )
    peft_model = get_peft_model(base, config)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    out = tmp_path / "grafted"
    graft(gemma3_vlm_trio["instruct"], out, adapter=adapter)
    instruct = AutoModelForImageTextToText.from_pretrained(gemma3_vlm_trio["instruct"])
    merged = PeftModel.from_pretrained(instruct, adapter).merge_and_unload().state_dict()
    got, parts = _tensors(out), checkpoint_parts(out)
    assert {parts.module_name(n) for n in got} <= set(merged)  # (state_dict also lists the tied lm_head)
    for name, value in got.items():  # files spell names as transformers saves them; the model, as it loads them
        assert torch.allclose(value, merged[parts.module_name(name)], atol=1e-6), name


def test_files_in_the_module_spelling_are_grafted_on_their_language_model_only(gemma3_vlm_trio, tmp_path: Path) -> None:
    """Checkpoint files that spell names as the loaded model does (`model.language_model...`): same roles."""

    def respelled(src: Path, dst: Path) -> Path:
        dst.mkdir()
        for f in src.iterdir():
            if f.name != "model.safetensors":
                (dst / f.name).write_bytes(f.read_bytes())
        renamed = {
            k.replace("language_model.model.", "model.language_model.")
            .replace("vision_tower.", "model.vision_tower.")
            .replace("multi_modal_projector.", "model.multi_modal_projector."): v
            for k, v in _tensors(src).items()
        }
        save_file(renamed, str(dst / "model.safetensors"), metadata={"format": "pt"})
        return dst

    trio = {k: respelled(v, tmp_path / k) for k, v in gemma3_vlm_trio.items()}
    assert all(k.startswith("model.") for k in _tensors(trio["base"]))
    assert json.loads((trio["base"] / "config.json").read_text())["model_type"] == "gemma3"
    out = tmp_path / "grafted"
    graft(trio["instruct"], out, base=trio["base"], tuned=trio["tuned"])
    got, instruct = _tensors(out), _tensors(trio["instruct"])
    changed = [n for n in got if not torch.equal(got[n], instruct[n])]
    assert changed and all(n.startswith("model.language_model.layers.") for n in changed)


def test_qwen2_vl_keeps_its_projector_inside_the_vision_model_and_it_is_found() -> None:
    """Qwen2-VL (a Base / Instruct VLM family) nests its projector, the patch merger, in the vision model.
    Built on the meta device: its processor needs torchvision, which is not installed here."""
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig

    from shadowft.modality import module_parts

    text = dict(
        vocab_size=400,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
        bos_token_id=None,
        eos_token_id=1,
    )
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=8, spatial_merge_size=2)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(Qwen2VLConfig(text_config=text, vision_config=vision))
    parts = module_parts(model)
    assert parts.role("model.visual.merger.mlp.0.weight") == "projector"
    assert parts.role("model.visual.blocks.0.attn.qkv.weight") == "vision_tower"
    assert parts.role("model.language_model.layers.0.self_attn.q_proj.weight") == "language_model"


def test_validation_loss_of_a_vlm_reads_the_images(gemma3_vlm_trio, tmp_path: Path) -> None:
    """graft.alpha auto scores each candidate on the held-out split: for a VLM, with its pixel values."""
    from shadowft.config import DataConfig
    from shadowft.graft.select import validation_loss
    from shadowft.vlm_data import prepare_vlm_dataset
    from tests.test_pipeline_vlm import write_image_dataset

    data = write_image_dataset(tmp_path / "data", n=8)
    spec = DataConfig(sources=[str(data)], max_length=64, validation_ratio=0.5)
    prepare_vlm_dataset(spec, gemma3_vlm_trio["instruct"], tmp_path / "prepared")
    base = validation_loss(gemma3_vlm_trio["base"], tmp_path / "prepared")
    instruct = validation_loss(gemma3_vlm_trio["instruct"], tmp_path / "prepared")
    assert base["samples"] == instruct["samples"] == 4 and base["tokens"] > 0
    assert base["loss"] != instruct["loss"] and all(x["loss"] == x["loss"] for x in (base, instruct))
