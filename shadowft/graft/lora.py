"""A PEFT LoRA adapter read lazily: its modules, their scales, and whether it fits a model."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from shadowft.checkpoint import Checkpoint
from shadowft.errors import CheckpointError, PairError


@dataclass
class LoraModule:
    """One adapted linear layer: W += alpha * scale * (B @ A), transposed for fan_in_fan_out."""

    target: str  # the weight tensor it updates, e.g. model.layers.0.self_attn.q_proj.weight
    a: str
    b: str
    scale: float
    fan_in_fan_out: bool
    bias: str | None = None


class LoraAdapter:
    """A PEFT LoRA adapter dir (adapter_config.json + adapter_model.safetensors), read lazily."""

    PREFIX = "base_model.model."

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        cfg_file = self.path / "adapter_config.json"
        if not cfg_file.is_file():
            raise CheckpointError(
                f"{self.path} is not a PEFT adapter (no adapter_config.json)",
                hint="pass the directory written by PEFT's save_pretrained",
            )
        self.config = json.loads(cfg_file.read_text())
        ptype = self.config.get("peft_type", "LORA")
        if ptype != "LORA":
            raise CheckpointError(f"adapter {self.path} is a {ptype} adapter; only LoRA adapters can be grafted")
        if self.config.get("use_dora"):
            raise CheckpointError(
                f"adapter {self.path} uses DoRA, whose update depends on the base weights' norms",
                hint="Shadow-FT's LoRA graft needs a plain LoRA adapter (use_dora=False)",
            )
        weights = self.path / "adapter_model.safetensors"
        if not weights.exists():
            raise CheckpointError(
                f"adapter {self.path} has no adapter_model.safetensors",
                hint="pickled adapter_model.bin is refused; re-save the adapter with safe_serialization=True",
            )
        self.ckpt = Checkpoint(weights, role="adapter")
        self.modules = self._modules()

    def _scale(self, module: str) -> float:
        r = self.config.get("r", 8)
        alpha = self.config.get("lora_alpha", r)
        for key, val in (self.config.get("rank_pattern") or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                r = val
                break
        for key, val in (self.config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                alpha = val
                break
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def _modules(self) -> dict[str, LoraModule]:
        groups: dict[str, dict[str, str]] = {}
        unsupported = []
        for key in self.ckpt.tensors:
            name = key[len(self.PREFIX) :] if key.startswith(self.PREFIX) else key
            m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.(weight|bias)", name)
            if not m:
                unsupported.append(key)
                continue
            module, part, kind = m.groups()
            groups.setdefault(module, {})[f"{part}.{kind}"] = key
        if unsupported:
            raise CheckpointError(
                f"adapter {self.path} holds tensors that are not LoRA A/B matrices: {', '.join(unsupported[:5])}",
                hint="modules_to_save, trainable tokens and embedding LoRA are not graftable; "
                "retrain with target_modules on linear layers only",
            )
        fifo = bool(self.config.get("fan_in_fan_out", False))
        modules = {}
        for module, parts in groups.items():
            if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
                raise CheckpointError(f"adapter {self.path}: module {module} lacks its lora_A or lora_B weight")
            lm = LoraModule(
                target=f"{module}.weight",
                a=parts["lora_A.weight"],
                b=parts["lora_B.weight"],
                scale=self._scale(module),
                fan_in_fan_out=fifo,
                bias=parts.get("lora_B.bias"),
            )
            modules[lm.target] = lm
        return modules

    def delta_shape(self, m: LoraModule) -> tuple[int, int]:
        out_f = self.ckpt.tensors[m.b].shape[0]
        in_f = self.ckpt.tensors[m.a].shape[1]
        return (in_f, out_f) if m.fan_in_fan_out else (out_f, in_f)

    def check_fits(self, model: Checkpoint) -> None:
        """Refuse an adapter whose targets are missing from, or shaped differently in, `model`."""
        missing = [t for t in self.modules if t not in model.tensors]
        if missing:
            raise PairError(
                f"adapter {self.path} targets {len(missing)} weight(s) that {model.role} {model.path} lacks, "
                f"e.g. {', '.join(missing[:3])}",
                hint="the adapter was trained on a different architecture; train it on this model's Base",
            )
        bad = [
            f"{t}: adapter gives {list(self.delta_shape(m))}, {model.role} has {list(model.tensors[t].shape)}"
            for t, m in self.modules.items()
            if tuple(model.tensors[t].shape) != self.delta_shape(m)
        ]
        if bad:
            raise PairError(
                f"adapter {self.path} does not fit {model.role} {model.path}:\n  - " + "\n  - ".join(bad[:8]),
                hint="the adapter was trained on a model with other layer sizes; train it on this model's Base",
            )

    def close(self) -> None:
        self.ckpt.close()
