"""lm-eval's `hf` backend (`HFLM`): transformers in this process, one device."""

from __future__ import annotations

from pathlib import Path

from shadowft.errors import EvalError
from shadowft.evaluate.backends.base import EvalBackend, LoadedModel, thinking_args


def auto_device(device: str | None) -> str:
    """`device`, or cuda when available, else cpu."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class HFBackend(EvalBackend):
    name = "hf"

    def check_model(self, model_dir: Path) -> None:
        """A vision-language model is refused: lm-eval's `hf` model would load it as a causal LM and fail
        deep inside transformers (or run its text model without the vision tower)."""
        from shadowft.modality import is_multimodal

        if is_multimodal(model_dir):
            raise EvalError(
                f"{model_dir} is a vision-language model (its config has a vision_config); eval.backend hf "
                "evaluates text models only",
                hint="this is a vision-language model: set eval.backend: hf-multimodal (or vllm-vlm on GPUs; "
                "shadowft eval: --backend hf-multimodal)",
            )

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
        from lm_eval.models.huggingface import HFLM

        device = auto_device(device)
        lm = HFLM(
            pretrained=str(model_dir),
            device=device,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            **thinking_args(enable_thinking),
        )
        return LoadedModel(
            lm=lm,
            device=device,
            has_chat_template=bool(getattr(lm.tokenizer, "chat_template", None)),
            max_length=int(getattr(lm, "max_length", 0) or 0),
        )
