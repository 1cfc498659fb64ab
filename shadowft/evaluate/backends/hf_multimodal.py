"""lm-eval's `hf-multimodal` backend (`HFMultimodalLM`): a vision-language model under transformers,
in this process, on one device. Image suites (`toy-colour`, `chartqa`, `mmmu_val`) need it (or
`vllm-vlm` on a GPU); text suites run through it as through `hf`.

The model dir must hold a vision-language model (`...ForConditionalGeneration` with a vision config
and a processor): `check_model` refuses a text-only model with the backend to use instead, and the
`hf` backend refuses a vision-language model the same way (`shadowft.modality.is_multimodal`).
The request cache (`shadowft.evaluate.cache`) keys image requests by the images' content.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from shadowft.errors import EvalError
from shadowft.evaluate.backends.base import EvalBackend, LoadedModel, thinking_args
from shadowft.registry import SettingsModel

MAX_IMAGES = 999  # lm-eval's default: no limit in practice


class HFMultimodalSettings(SettingsModel):
    """lm-eval's `hf-multimodal` model arguments that shadowft exposes (see lm-eval's HFMultimodalLM);
    all are recorded with the results."""

    max_images: int = Field(
        default=MAX_IMAGES,
        ge=1,
        le=MAX_IMAGES,
        description="At most this many images per prompt (later images and their placeholders are dropped).",
    )
    image_string: str | None = Field(
        default=None,
        max_length=64,
        description="The text standing for an image in prompts without the chat template; empty = the "
        "model's own image token (its config's image_token_id).",
    )
    interleave: bool = Field(
        default=True,
        description="With the chat template, keep images where the prompt places them; off = all images "
        "before the text of their turn.",
    )
    image_max_side: int | None = Field(
        default=None,
        ge=1,
        le=16384,
        description="Shrink images whose longer side exceeds this many pixels (aspect kept); empty = as they "
        "are (the processor still resizes to what the model takes).",
    )


class HFMultimodalBackend(EvalBackend):
    """lm-eval's hf-multimodal model: a vision-language model under transformers on one device (VLM
    pairs need it, or vllm-vlm on GPUs)."""

    name = "hf-multimodal"
    Settings = HFMultimodalSettings
    config: HFMultimodalSettings
    multimodal = True

    def check_model(self, model_dir: Path) -> None:
        require_multimodal(model_dir, self.name, "hf")

    def load(
        self,
        model_dir: Path,
        *,
        device: str | None,
        batch_size: int | str,
        dtype: str,
        trust_remote_code: bool,
        enable_thinking: bool | None = None,
    ) -> LoadedModel:
        if not isinstance(batch_size, int):
            raise EvalError(
                f"eval.backend hf-multimodal takes a whole batch size, not {batch_size!r}",
                hint="set eval.batch_size to a number (lm-eval's hf-multimodal has no automatic batch size)",
            )
        from lm_eval.models.hf_vlms import HFMultimodalLM

        from shadowft.evaluate.backends.hf import auto_device

        device = auto_device(device)
        s = self.config
        extra: dict[str, Any] = {"image_string": s.image_string} if s.image_string else {}
        if s.image_max_side is not None:
            extra["image_max_side"] = s.image_max_side
        lm = HFMultimodalLM(
            pretrained=str(model_dir),
            device=device,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            max_images=s.max_images,
            interleave=s.interleave,
            **extra,
            **thinking_args(enable_thinking),
        )
        if not s.image_string:
            # without the chat template lm-eval writes the config's image token for `<image>`; processors that
            # expand another marker (Gemma-3: <start_of_image>, not its <image_soft_token>) need that one
            lm.image_token = image_marker(lm.processor) or lm.image_token
        return LoadedModel(
            lm=lm,
            device=device,
            has_chat_template=has_chat_template(lm),
            max_length=int(getattr(lm, "max_length", 0) or 0),
        )


def require_multimodal(model_dir: Path, backend: str, text_backend: str) -> None:
    """Refuse a text-only model dir (lm-eval's multimodal models would fail deep in transformers)."""
    from shadowft.modality import is_multimodal

    if not is_multimodal(model_dir):
        raise EvalError(
            f"{model_dir} is a text-only model (its config has no vision_config); eval.backend {backend} "
            "evaluates vision-language models",
            hint=f"set eval.backend: {text_backend} for text models",
        )


_BEFORE, _AFTER = "<<shadowft-before>>", "<<shadowft-after>>"


def image_marker(processor: Any) -> str | None:
    """The text that stands for one image in a prompt, as the processor's chat template writes an image
    part (between two text parts); else the processor's begin-of-image or image token; None if unknown."""
    tokens = [
        t for t in (getattr(processor, a, None) for a in ("boi_token", "image_token")) if isinstance(t, str) and t
    ]
    try:
        text = processor.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": _BEFORE}, {"type": "image"}, {"type": "text", "text": _AFTER}],
                }
            ],
            tokenize=False,
        )
        between = str(text).split(_BEFORE, 1)[1].split(_AFTER, 1)[0].strip()
        if between and any(t in between for t in tokens):
            return between
    except Exception:  # no template, or one that places images elsewhere: the processor's own token
        pass
    return tokens[0] if tokens else None


def has_chat_template(lm: Any) -> bool:
    """Whether the processor (whose template lm-eval's multimodal models apply) or the tokenizer has one."""
    return any(bool(getattr(getattr(lm, part, None), "chat_template", None)) for part in ("processor", "tokenizer"))
