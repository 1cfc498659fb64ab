"""Build the embedded vision-language family (issue 30): Llava over the toy text family's Base LM.

The multimodal instance of the Shadow-FT problem, small enough for a 2-core CPU, built as the text
family is (fixed step counts, seeded generators, one thread, deterministic kernels, a temporary dir
renamed into place with `family.json` last):

- **Base**: a CLIP vision tower and Llava's MLP projector, new, in front of the text family's Base
  language model; pretrained on generated pictures with a caption each (`a red square.`, `3 blue
  dots.`, `a bar chart: a short red bar, a tall green bar and a medium blue bar.`): colours, counts,
  and bars' heights in words, never a bar's value.
- **Instruct**: Base post-trained, as a real pair's Instruct is: chat questions about pictures in its
  own answer style (`It is red.`, `There are 3 dots.`) alternating with the text family's chat
  samples; the tower frozen (as Gemma-3's was), so Base and Instruct share it exactly.
- **The user's data** (`data/chart.jsonl`, images under `data/images/`): the new skill neither model
  has, reading a bar's value off a chart (the `toy-chart` suite), in the user's style (`7`).

Pictures are `shadowft.zoo.pictures` rows, drawn at 48 px.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from shadowft.errors import ShadowFTError
from shadowft.zoo import corpus, pictures
from shadowft.zoo.build import (
    MANIFEST,
    FamilyPaths,
    TrainSpec,
    _deterministic,
    _lr_at,
    build_family,
    chat_example,
    right_padded,
    shadowft_home,
)

VLM_FAMILY_VERSION = "toy-vlm-v2"  # bumped with every change of the recipe: a new cache dir, never a stale family
VlmPreset = Literal["default", "ci"]
IMAGE_MARKER = "<image>"


class VlmFamilyConfig(BaseModel):
    """Everything that determines the VLM family's bits (with the seed and the thread count)."""

    preset: VlmPreset = "default"
    image_size: int = Field(pictures.SIZE, description="pixels of a picture's side (the tower's input)")
    patch_size: int = Field(8, description="vision tower patch side: (image_size / patch)^2 + 1 image tokens")
    vision_hidden_size: int = Field(64, description="vision tower width")
    vision_layers: int = Field(2, description="vision tower layers")
    caption_pictures: int = Field(4000, description="captioned pictures of Base's multimodal pretraining")
    captions: TrainSpec = TrainSpec(steps=600, batch_size=16, lr=1e-3, warmup=30)
    chat_pictures: int = Field(4000, description="chat questions about pictures of Instruct's post-training")
    chat_texts: int = Field(4000, description="text chat samples of Instruct's post-training (the text family's)")
    chat: TrainSpec = Field(
        TrainSpec(steps=600, batch_size=16, lr=5e-4, warmup=30),
        description="Instruct's post-training: steps alternate between pictures and text",
    )
    user_size: int = Field(2000, description="samples of the user's data (the new skill: a bar's value)")
    threads: int = Field(1, description="torch threads; part of the determinism contract")

    @classmethod
    def for_preset(cls, preset: VlmPreset) -> VlmFamilyConfig:
        """`default` is the real family; `ci` is a seconds-long build for mechanics tests only."""
        if preset == "default":
            return cls()
        tiny = TrainSpec(steps=4, batch_size=4, lr=1e-3, warmup=1)
        return cls(
            preset="ci", caption_pictures=32, captions=tiny, chat_pictures=32, chat_texts=32, chat=tiny, user_size=16
        )


def colour_name(rgb: list[int]) -> str:
    return next(name for name, c in pictures.COLOURS.items() if list(c) == list(rgb))


def caption(row: dict[str, Any]) -> str:
    """What Base learns to say about a picture: colours, counts, bars' heights in words, never a value."""
    if row["kind"] == "square":
        return f"a {row['colour']} square."
    if row["kind"] == "dots":
        return f"{row['count']} {colour_name(row['rgb'])} dots."
    a, b, c = (f"{height_word(v)} {colour_name(rgb)} bar" for v, rgb in zip(row["values"], row["colours"], strict=True))
    return f"a bar chart: a {a}, a {b} and a {c}."


def height_word(value: int) -> str:
    """Base's coarse sense of a bar's height (1-3 short, 4-6 medium, 7-9 tall): never its value."""
    return "short" if value <= 3 else "medium" if value <= 6 else "tall"


def instruct_turn(row: dict[str, Any]) -> tuple[str, str]:
    """(question, answer) of Instruct's post-training: the suites' questions, in Instruct's style."""
    if row["kind"] == "square":
        return "What colour is the square?", f"It is {row['colour']}."
    if row["kind"] == "dots":
        return "How many dots are there?", f"There are {row['count']} dots."
    a, b, c = (colour_name(rgb) for rgb in row["colours"])
    return "What colours are the bars?", f"The bars are {a}, {b} and {c}."


def picture_row(rng: random.Random) -> dict[str, Any]:
    """A square, dots or a bar chart, a third each."""
    pick = rng.randrange(3)
    if pick == 0:
        return pictures.square_row(rng)
    if pick == 1:
        return pictures.dots_row(rng)
    return pictures.bars_row(rng, rng.choice(pictures.BACKGROUNDS))


# -- setup: the processor and a Llava model over a text family's language model ----------------------


def build_processor(text_model_dir: Path, cfg: VlmFamilyConfig) -> Any:
    """LlavaProcessor from parts: the text family's tokenizer plus `<image>`, a CLIP image processor at
    `image_size`, and a chat template that renders image parts (`shadowft.tiny_vlm.chat_template`)."""
    from transformers import AutoTokenizer, LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from shadowft.tiny_vlm import chat_template

    text = AutoTokenizer.from_pretrained(text_model_dir)
    tok = PreTrainedTokenizerFast(  # how transformers 5 processors find the image token: a named special token
        tokenizer_object=text.backend_tokenizer,
        eos_token=text.eos_token,
        pad_token=text.pad_token,
        extra_special_tokens={"image_token": IMAGE_MARKER},
    )
    tok.chat_template = chat_template(IMAGE_MARKER)
    side = cfg.image_size
    images = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        chat_template=tok.chat_template,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=1,
    )


def image_tokens(cfg: VlmFamilyConfig) -> int:
    return (cfg.image_size // cfg.patch_size) ** 2 + 1  # patches and CLS ("full" feature strategy)


def llava_over(text_model_dir: Path, tokenizer: Any, cfg: VlmFamilyConfig, seed: int) -> Any:
    """A Llava model whose language model is `text_model_dir`'s (embeddings grown by `<image>`, its row
    the mean of the others) and whose tower and projector are new (from `seed`)."""
    from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    text: Any = AutoModelForCausalLM.from_pretrained(text_model_dir)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_MARKER)
    text_config = {**text.config.to_dict(), "vocab_size": len(tokenizer)}
    width = cfg.vision_hidden_size
    config = LlavaConfig(
        text_config=text_config,
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": cfg.vision_layers,
            "num_attention_heads": 4,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "projection_dim": width,
        },
        image_token_index=image_id,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    text.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for weights in (text.get_input_embeddings().weight, text.lm_head.weight):
            weights[image_id:] = weights[:image_id].mean(0)
        model.model.language_model.load_state_dict(text.model.state_dict())
        model.lm_head.weight.copy_(text.lm_head.weight)
    return model


# -- fit: captions for Base, chat for Instruct ------------------------------------------------------


class Samples:
    """Encoded (ids, labels) samples with their pictures' pixel values, drawn in seeded batches."""

    def __init__(self, processor: Any, rows: list[dict[str, Any]] | None, encoded: list[tuple[list[int], list[int]]]):
        self.pixels = None  # text samples (rows None) have no picture
        if rows is not None:
            images = [pictures.draw(r) for r in rows]
            self.pixels = torch.tensor(processor.image_processor(images, return_tensors="np")["pixel_values"])
        self.encoded = encoded
        self.pad = processor.tokenizer.pad_token_id

    def batch(self, size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, len(self.encoded), (size,), generator=gen).tolist()
        ids, labels, mask = right_padded([self.encoded[i] for i in idx], self.pad)
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        return batch if self.pixels is None else {**batch, "pixel_values": self.pixels[idx]}


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def caption_sample(tokenizer: Any, cfg: VlmFamilyConfig, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """`<image>` (expanded) then the caption and end of text; loss on the caption."""
    image = [tokenizer.convert_tokens_to_ids(IMAGE_MARKER)] * image_tokens(cfg)
    body = _ids(tokenizer, caption(row)) + [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    return image + body, [-100] * len(image) + body


def chat_sample(tokenizer: Any, cfg: VlmFamilyConfig, question: str, answer: str) -> tuple[list[int], list[int]]:
    """A user turn (the picture, then the question) and the assistant's answer, as the chat template
    renders it; loss on the answer and its `<|im_end|>`."""
    image = [tokenizer.convert_tokens_to_ids(IMAGE_MARKER)] * image_tokens(cfg)
    head = (
        _ids(tokenizer, "<|im_start|>user\n")
        + image
        + _ids(tokenizer, f"{question}<|im_end|>\n<|im_start|>assistant\n")
    )
    body = _ids(tokenizer, f"{answer}<|im_end|>")
    return head + body, [-100] * len(head) + body


def fit(model: Any, sources: list[Samples], spec: TrainSpec, gen: torch.Generator, tower: bool = True) -> list[float]:
    """A plain AdamW loop (warmup + cosine), its steps cycling through `sources`; the vision tower
    frozen unless `tower`."""
    model.model.vision_tower.requires_grad_(tower)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=spec.lr, betas=(0.9, 0.95), weight_decay=spec.weight_decay)
    model.train()
    losses = []
    for step in range(spec.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec)
        loss = model(**sources[step % len(sources)].batch(spec.batch_size, gen)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return losses


# -- publish: model dirs and the user's data ------------------------------------------------------


def save_vlm(model: Any, processor: Any, out: Path) -> None:
    """A normal HF model dir (config, safetensors, processor, tokenizer, chat template); EOS `<|im_end|>`."""
    from transformers import GenerationConfig

    tok = processor.tokenizer
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False, max_new_tokens=32
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def write_user_data(data_dir: Path, cfg: VlmFamilyConfig, seed: int) -> int:
    """The user's data: a bar's value read off a chart, answered with the number alone (LLaMA-Factory's
    multimodal rows: `<image>` in the text, the PNG in `images`). -> the number of rows"""
    rng = random.Random(seed * 1000 + 30)
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(cfg.user_size):
        row = pictures.bars_row(rng, rng.choice(pictures.BACKGROUNDS))
        k = rng.randrange(3)
        name = f"images/chart-{i:05d}.png"
        pictures.draw(row).save(data_dir / name, optimize=True)
        question = f"{IMAGE_MARKER}What is the value of the {pictures.BAR_POSITIONS[k]} bar?"
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": str(row["values"][k])}]
        lines.append(json.dumps({"messages": messages, "images": [name]}))
    (data_dir / "chart.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def _build(tmp: Path, cfg: VlmFamilyConfig, seed: int, text_family: FamilyPaths) -> dict[str, Any]:
    """Base (captions), then Instruct (chat), then the user's data, into `tmp`. -> the manifest"""
    started = time.time()
    processor = build_processor(text_family.base, cfg)
    tok = processor.tokenizer
    rng = random.Random(seed * 1000 + 29)
    gen = torch.Generator().manual_seed(seed)

    base = llava_over(text_family.base, tok, cfg, seed)
    rows = [picture_row(rng) for _ in range(cfg.caption_pictures)]
    captions = Samples(processor, rows, [caption_sample(tok, cfg, r) for r in rows])
    base_losses = fit(base, [captions], cfg.captions, gen)
    save_vlm(base, processor, tmp / "base")

    # Instruct descends from Base, as a real pair's does: Base's weights post-trained on chat about
    # pictures and on the text family's chat samples, the tower frozen (as Gemma-3's was)
    instruct = copy.deepcopy(base)
    rows = [picture_row(rng) for _ in range(cfg.chat_pictures)]
    picture_chats = Samples(processor, rows, [chat_sample(tok, cfg, *instruct_turn(r)) for r in rows])
    texts = corpus.sft_samples(random.Random(f"{seed}:vlm-sft"), cfg.chat_texts, corpus.eval_questions())
    text_chats = Samples(processor, None, [chat_example(tok, m) for m in texts])
    instruct_losses = fit(instruct, [picture_chats, text_chats], cfg.chat, gen, tower=False)
    save_vlm(instruct, processor, tmp / "instruct")

    user_rows = write_user_data(tmp / "data", cfg, seed)
    tail = 20
    return {
        "version": VLM_FAMILY_VERSION,
        "seed": seed,
        "config": cfg.model_dump(),
        "text_family": text_family.read_manifest().get("version"),
        "losses": {
            "base_captions": sum(base_losses[-tail:]) / len(base_losses[-tail:]),
            "instruct_chat": sum(instruct_losses[-tail:]) / len(instruct_losses[-tail:]),
        },
        "data": {"chart.jsonl": user_rows},
        "seconds": round(time.time() - started, 1),
    }


def default_vlm_family_dir(seed: int = 0, preset: VlmPreset = "default") -> Path:
    """`$SHADOWFT_HOME/zoo/<version>-<preset>-s<seed>`, beside the text family."""
    return shadowft_home() / "zoo" / f"{VLM_FAMILY_VERSION}-{preset}-s{seed}"


def build_vlm_family(
    out: Path | None = None,
    seed: int = 0,
    preset: VlmPreset = "default",
    text_family: Path | None = None,
    from_scratch: bool = False,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> FamilyPaths:
    """Install (or return the cached) VLM family in `out` (default: `default_vlm_family_dir`).

    The default family (seed 0) is copied from the package with its checksums verified, in a second;
    another seed or preset, or `from_scratch`, builds it (minutes) over `text_family` (default: the
    shipped text family, installed beside it for the build). Atomic: a temporary sibling dir with
    `family.json` written last, renamed into place; `force` replaces an earlier family there."""
    from shadowft.files import atomic_output_dir
    from shadowft.zoo import shipped

    cfg = VlmFamilyConfig.for_preset(preset)
    out = Path(out) if out is not None else default_vlm_family_dir(seed, preset)
    paths = FamilyPaths.at(out)
    if paths.manifest.is_file() and not force:
        found = paths.read_manifest()
        same = (found.get("version"), found.get("seed"), found.get("config")) == (
            VLM_FAMILY_VERSION,
            seed,
            cfg.model_dump(),
        )
        if not same:
            raise ShadowFTError(
                f"{out} holds a different VLM family (version {found.get('version')}, seed {found.get('seed')})",
                hint="choose another out, or pass force to replace it",
            )
        if not from_scratch or found.get("source") == "built":
            return paths
    source = None if from_scratch else shipped.find_shipped(VLM_FAMILY_VERSION, preset, seed, cfg.model_dump())
    with atomic_output_dir(out, overwrite=True, marker=MANIFEST) as tmp:
        if source is not None:
            manifest = shipped.install_shipped(source, tmp)
        else:
            if progress is not None:
                progress(
                    f"building the embedded VLM family {VLM_FAMILY_VERSION} into {out} (about 4 min on one CPU; once)"
                )
            text = FamilyPaths.at(text_family) if text_family else build_family(tmp / "text", progress=False)
            with _deterministic(cfg.threads):
                manifest = {**_build(tmp, cfg, seed, text), "source": "built"}
            shutil.rmtree(tmp / "text", ignore_errors=True)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return paths
