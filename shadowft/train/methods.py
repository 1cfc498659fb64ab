"""What is trained: a LoRA adapter or all weights. Every lora-vs-full difference lives here.

- how the model is loaded (a frozen LoRA base may be held in the half-precision compute dtype;
  full fine-tuning keeps fp32 master weights and autocasts),
- how it is prepared (PEFT adapters on the target modules, or nothing),
- what is published (an adapter dir, or a HF model dir with the tokenizer),
- what the published output is to the pipeline (`produces`): an adapter is already the update to
  graft and must be merged to become a model; a full model is already a model and its update is the
  delta against Base.

The objective (the loss) and the launcher (how processes start) are independent of the method.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from shadowft.config import TrainConfig
from shadowft.errors import ShadowFTError
from shadowft.registry import lookup

if TYPE_CHECKING:
    import torch

Produces = Literal["adapter", "model"]


class TrainMethod:
    """One way of choosing the trained parameters. Subclasses set `name` and `produces`."""

    name: ClassVar[str]
    produces: ClassVar[Produces]

    def load_dtype(self, precision: str) -> torch.dtype:
        """The dtype the model is loaded in, for the resolved precision (fp32 / bf16 / fp16)."""
        import torch

        return torch.float32

    def prepare(self, model: Any, spec: TrainConfig) -> Any:
        """The model to hand to the Trainer (e.g. wrapped with adapters)."""
        return model

    def save(self, model: Any, tokenizer: Any, spec: TrainConfig, model_dir: Path, out: Path) -> None:
        """Write the trained result to the (empty, temporary) directory `out`."""
        raise NotImplementedError


class LoraMethod(TrainMethod):
    name = "lora"
    produces = "adapter"

    def load_dtype(self, precision: str) -> torch.dtype:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)

    def prepare(self, model: Any, spec: TrainConfig) -> Any:
        from peft import LoraConfig, get_peft_model

        targets: list[str] | str = spec.lora_targets
        if targets == ["all-linear"]:
            targets = "all-linear"
        else:
            names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
            missing = [t for t in spec.lora_targets if t not in names]
            if missing:
                import torch

                linear = sorted(
                    {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
                    - {"lm_head"}
                )
                raise ShadowFTError(
                    f"train.lora_targets: no module named {', '.join(missing)} in this model",
                    hint=f"its linear layers are: {', '.join(linear)} (or use ['all-linear'])",
                )
        alpha = spec.effective_lora_alpha
        config = LoraConfig(
            r=spec.lora_rank,
            lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,  # type: ignore[arg-type]
            lora_dropout=spec.lora_dropout,
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # PEFT 0.21 calls a transformers API deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)

    def save(self, model: Any, tokenizer: Any, spec: TrainConfig, model_dir: Path, out: Path) -> None:
        model.save_pretrained(str(out), safe_serialization=True)
        (out / "README.md").unlink(missing_ok=True)  # PEFT's model card template


class FullMethod(TrainMethod):
    name = "full"
    produces = "model"

    def save(self, model: Any, tokenizer: Any, spec: TrainConfig, model_dir: Path, out: Path) -> None:
        import torch

        target = torch.float32 if spec.full_save_dtype == "fp32" else (_config_dtype(model_dir) or torch.float32)
        model = model.to(target)
        model.config.use_cache = True
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))


METHODS: dict[str, TrainMethod] = {m.name: m for m in (LoraMethod(), FullMethod())}


def get_method(name: str) -> TrainMethod:
    """The training method called `name` (`lora` or `full`)."""
    return lookup(METHODS, name, "training method")


def _config_dtype(model_dir: Path) -> torch.dtype | None:
    """The dtype a model dir's config.json declares (None when absent or unknown)."""
    import torch

    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)
