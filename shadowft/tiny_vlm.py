"""Tiny real vision-language models: Base / Instruct / tuned trios of real transformers architectures.

Like `shadowft.tiny` for text, these are standard `...ForConditionalGeneration` classes with random
weights, saved as ordinary HF model dirs (config, safetensors, processor, tokenizer with image tokens
and a chat template that renders image content parts). Processors are assembled from parts, offline:
an image processor with explicit sizes and the family's tokenizer (the hub tests of these processors
download files, which this machine cannot).

Architectures: `gemma3` (Gemma-3's SigLIP tower, pooling projector, Gemma-3 text model: the family the
paper used) and `llava` (CLIP tower, MLP projector, Llama text model). Qwen2-VL's processor needs a
video processor, which needs torchvision: not installed, so not built here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from shadowft.tiny import build_tokenizer, perturb

VlmArch = Literal["gemma3", "llava"]
VLM_ARCHS: tuple[str, ...] = ("gemma3", "llava")

#: the image placeholder each architecture's chat template writes for an image part (its processor
#: expands it to the image's tokens)
IMAGE_MARKERS = {"gemma3": "<start_of_image>", "llava": "<image>"}
IMAGE_SIZE = 32
PATCH_SIZE = 8


def chat_template(image_marker: str) -> str:
    """ChatML over string or content-part messages; an image part renders as `image_marker`."""
    return (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image_marker + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def _tokenizer(arch: VlmArch, texts: list[str] | None = None, vocab_size: int = 384) -> Any:
    """The text family's BPE tokenizer plus the architecture's image tokens (as named special tokens,
    which is how transformers 5 processors find them)."""
    from transformers import PreTrainedTokenizerFast

    text = build_tokenizer(texts, vocab_size=vocab_size)
    extra = (
        {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
        if arch == "gemma3"
        else {"image_token": "<image>"}
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=text.backend_tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=extra,
    )
    tok.chat_template = chat_template(IMAGE_MARKERS[arch])
    return tok


def build_processor(arch: VlmArch, texts: list[str] | None = None, vocab_size: int = 384) -> Any:
    """The architecture's processor from parts: image processor (IMAGE_SIZE px) + tokenizer."""
    tok = _tokenizer(arch, texts, vocab_size)
    template = tok.chat_template
    if arch == "gemma3":
        from transformers import Gemma3Processor
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        gemma_images = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_pan_and_scan=False)
        return Gemma3Processor(image_processor=gemma_images, tokenizer=tok, chat_template=template, image_seq_length=4)
    if arch == "llava":
        from transformers import LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        images = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        return LlavaProcessor(
            image_processor=images,
            tokenizer=tok,
            chat_template=template,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy="full",
            num_additional_image_tokens=1,
        )
    raise ValueError(f"unknown tiny VLM architecture {arch!r}; choose one of {', '.join(VLM_ARCHS)}")


def tiny_vlm_config(arch: VlmArch, tokenizer: Any, hidden_size: int = 32, num_layers: int = 2) -> Any:
    """A small but standard config: vision tower, projector and text model of `arch`."""
    text: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    vision: dict[str, Any] = dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    ids = tokenizer.convert_tokens_to_ids
    if arch == "gemma3":
        from transformers import Gemma3Config

        layer_types = ["sliding_attention"] * (num_layers - 1) + ["full_attention"]
        return Gemma3Config(
            text_config={
                "model_type": "gemma3_text",
                **text,
                "head_dim": hidden_size // 4,
                "sliding_window": 64,
                "layer_types": layer_types,
            },
            vision_config={"model_type": "siglip_vision_model", **vision},
            mm_tokens_per_image=4,
            boi_token_index=ids("<start_of_image>"),
            eoi_token_index=ids("<end_of_image>"),
            image_token_index=ids("<image_soft_token>"),
            tie_word_embeddings=True,
            **{"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},  # PretrainedConfig's
        )
    if arch == "llava":
        from transformers import LlavaConfig

        return LlavaConfig(
            text_config={"model_type": "llama", **text},
            vision_config={"model_type": "clip_vision_model", **vision, "projection_dim": hidden_size},
            image_token_index=ids("<image>"),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            tie_word_embeddings=False,
        )
    raise ValueError(f"unknown tiny VLM architecture {arch!r}; choose one of {', '.join(VLM_ARCHS)}")


def random_vlm(config: Any, seed: int = 0) -> Any:
    """A randomly initialised VLM for `config`, reproducible from `seed` (norms given some spread)."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            elif not p.any():  # Gemma-3 starts its image projection at zero: such a model ignores images
                p.normal_(0.0, 0.02)
    return model.eval()


def save_vlm(model: Any, processor: Any, out: Path) -> Path:
    """Save as a HF model dir: safetensors, config, processor, tokenizer and chat template."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def make_vlm_trio(
    root: Path, arch: VlmArch = "gemma3", hidden_size: int = 32, num_layers: int = 2, seed: int = 0
) -> dict[str, Path]:
    """Write a Base / Instruct / tuned-Base trio of tiny VLMs under `root` (as `shadowft.tiny.make_trio`):
    Instruct and tuned are Base plus independent small perturbations of every tensor, vision tower
    and projector included."""
    root = Path(root)
    processor = build_processor(arch)
    config = tiny_vlm_config(arch, processor.tokenizer, hidden_size=hidden_size, num_layers=num_layers)
    paths = {}
    for name, noise_seed in (("base", None), ("instruct", seed + 1), ("tuned", seed + 2)):
        model = random_vlm(config, seed=seed)
        if noise_seed is not None:
            perturb(model, 0.075, noise_seed)
        if model.generation_config is not None:
            model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
            model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
        paths[name] = save_vlm(model, processor, root / name)
    return paths
