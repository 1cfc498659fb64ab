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
        parts = _parts(model)
        if parts is not None:  # a vision-language model: the language model's layers (and unfrozen parts')
            targets = multimodal_targets(model, parts, spec)
        elif targets == ["all-linear"]:
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

    def prepare(self, model: Any, spec: TrainConfig) -> Any:
        """A vision-language model's frozen parts (train.freeze_vision_tower / freeze_projector) get no
        gradients: their weights leave training bit-identical."""
        parts = _parts(model)
        if parts is not None:
            frozen = frozen_roles(spec)
            for name, p in model.named_parameters():
                if parts.role(name) in frozen:
                    p.requires_grad_(False)
        return model

    def save(self, model: Any, tokenizer: Any, spec: TrainConfig, model_dir: Path, out: Path) -> None:
        import torch

        target = torch.float32 if spec.full_save_dtype == "fp32" else (_config_dtype(model_dir) or torch.float32)
        model = model.to(target)
        model.config.use_cache = True
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))


METHODS: dict[str, TrainMethod] = {m.name: m for m in (LoraMethod(), FullMethod())}


def _parts(model: Any) -> Any:
    """The roles of a vision-language model's modules (`shadowft.modality.module_parts`), None for text."""
    from shadowft.modality import module_parts

    parts = module_parts(model)
    return parts if parts.multimodal else None


def frozen_roles(spec: TrainConfig) -> set[str]:
    """The parts of a vision-language model that training leaves as they are."""
    return {
        r for r, frozen in (("vision_tower", spec.freeze_vision_tower), ("projector", spec.freeze_projector)) if frozen
    }


def multimodal_targets(model: Any, parts: Any, spec: TrainConfig) -> str:
    """PEFT's target_modules for a vision-language model, as a regex over module names: the language
    model's modules named in train.lora_targets (its linear layers for ['all-linear']), plus every
    linear layer of an unfrozen vision tower or projector. The head and frozen parts get none."""
    import re

    import torch

    def linear_leaves(prefix: str, role: str) -> set[str]:
        return {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".") and parts.role(n) == role
        }

    def pattern(prefix: str, role: str, leaves: set[str]) -> str:
        # a part nested in this one (Qwen2-VL's merger, the projector inside its vision tower) is not this part
        nested = [
            q[len(prefix) + 1 :]
            for r, qs in parts.prefixes.items()
            if r != role
            for q in qs
            if q.startswith(prefix + ".")
        ]
        skip = f"(?!(?:{'|'.join(map(re.escape, nested))})\\.)" if nested else ""
        return rf"{re.escape(prefix)}\.{skip}(?:.*\.)?(?:{'|'.join(map(re.escape, sorted(leaves)))})"

    alternatives = []
    for lm in parts.prefixes.get("language_model", ()):
        leaves = linear_leaves(lm, "language_model")
        if spec.lora_targets != ["all-linear"]:
            names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n.startswith(lm + ".")}
            missing = [t for t in spec.lora_targets if t not in names]
            if missing:
                raise ShadowFTError(
                    f"train.lora_targets: no module named {', '.join(missing)} in this model's language model",
                    hint=f"its linear layers are: {', '.join(sorted(leaves))} (or use ['all-linear'])",
                )
            leaves = set(spec.lora_targets)
        alternatives.append(pattern(lm, "language_model", leaves))
    frozen = frozen_roles(spec)
    for role in ("vision_tower", "projector"):
        if role in frozen:
            continue
        for prefix in parts.prefixes.get(role, ()):
            leaves = linear_leaves(prefix, role)
            if not leaves:
                raise ShadowFTError(
                    f"train.freeze_{'vision_tower' if role == 'vision_tower' else 'projector'}=false with LoRA: "
                    f"the {role.replace('_', ' ')} ({prefix}) has no linear layers for an adapter",
                    hint="train it with train.method=full, or keep it frozen",
                )
            alternatives.append(pattern(prefix, role, leaves))
    return "|".join(alternatives)


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
