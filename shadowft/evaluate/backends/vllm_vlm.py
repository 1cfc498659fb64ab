"""lm-eval's `vllm-vlm` backend: a vision-language model under vLLM's engine (lm-eval's `VLLM_VLM`),
for image suites on GPUs. The engine arguments are the `vllm` backend's (`eval.vllm_vlm` holds its
own copy of them) plus the image settings; the preflight is the `vllm` backend's (vLLM installed,
enough CUDA GPUs, Ray for data parallel), so on a machine without them it refuses before any stage
runs. The model dir must hold a vision-language model (`check_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from shadowft.evaluate.backends.hf_multimodal import MAX_IMAGES, has_chat_template, require_multimodal
from shadowft.evaluate.backends.vllm import VLLMBackend, VLLMSettings


class VLLMVLMSettings(VLLMSettings):
    """lm-eval's `vllm-vlm` model arguments: vLLM's engine arguments plus the image settings; all are recorded."""

    max_images: int = Field(
        default=MAX_IMAGES,
        ge=1,
        le=MAX_IMAGES,
        description="At most this many images per prompt (vLLM's limit_mm_per_prompt).",
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
        description="Shrink images whose longer side exceeds this many pixels (aspect kept); empty = as they are.",
    )


class VLLMVLMBackend(VLLMBackend):
    """lm-eval's vllm-vlm model: a vision-language model under vLLM (needs the `vllm` extra and a GPU)."""

    name = "vllm-vlm"
    lm_eval_model = "vllm-vlm"
    Settings = VLLMVLMSettings
    config: VLLMVLMSettings
    multimodal = True
    cpu_backend = "hf-multimodal"

    def check_model(self, model_dir: Path) -> None:
        require_multimodal(model_dir, self.name, "vllm")

    def model_args(
        self,
        model_dir: Path,
        *,
        batch_size: int | str,
        dtype: str,
        trust_remote_code: bool,
        enable_thinking: bool | None = None,
    ) -> dict[str, Any]:
        args = super().model_args(
            model_dir,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            enable_thinking=enable_thinking,
        )
        s = self.config
        args.update(max_images=s.max_images, interleave=s.interleave)
        if s.image_max_side is not None:
            args["image_max_side"] = s.image_max_side
        return args

    def has_chat_template(self, lm: Any) -> bool:
        """The processor's chat template (lm-eval's vllm-vlm model holds one, not only a tokenizer)."""
        return has_chat_template(lm)
