"""A PEFT LoRA adapter read lazily: its modules, their scales, and whether it fits a model."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from shadowft.checkpoint import Checkpoint, check_inside, read_json_object
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
        self.config = read_json_object(cfg_file, "adapter config")
        self._check_config()
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
        check_inside(self.path, weights)
        self.ckpt = Checkpoint(weights, role="adapter")
        try:
            self.modules = self._modules()
        except BaseException:
            self.ckpt.close()
            raise

    def _bad_config(self, problem: str) -> CheckpointError:
        return CheckpointError(
            f"adapter {self.path}: adapter_config.json {problem}",
            hint="the adapter config is corrupt or hand-edited; use the one PEFT's save_pretrained wrote",
        )

    def _check_config(self) -> None:
        """The fields the graft computes with, of the types and ranges PEFT writes (a zero rank or
        a string alpha would otherwise fail deep in the arithmetic)."""
        cfg = self.config
        r = cfg.get("r", 8)
        if not _is_int(r) or r <= 0:
            raise self._bad_config(f"has r = {r!r}; the LoRA rank must be a positive integer")
        alpha = cfg.get("lora_alpha", r)
        if not _is_number(alpha) or not math.isfinite(alpha):
            raise self._bad_config(f"has lora_alpha = {alpha!r}; it must be a number")
        if not isinstance(cfg.get("peft_type", "LORA"), str):
            raise self._bad_config(f"has peft_type = {cfg.get('peft_type')!r}; it must be a string")
        for key, check, what in (
            ("rank_pattern", lambda v: _is_int(v) and v > 0, "a positive integer rank"),
            ("alpha_pattern", lambda v: _is_number(v) and math.isfinite(v), "a number"),
        ):
            patterns = cfg.get(key) or {}
            if not isinstance(patterns, dict):
                raise self._bad_config(f"has {key} = {patterns!r}; it must map module regexes to values")
            for regex, val in patterns.items():
                try:
                    re.compile(rf"(.*\.)?({regex})$")
                except re.error as exc:
                    raise self._bad_config(f"{key} key {regex!r} is not a valid regular expression ({exc})") from None
                if not check(val):
                    raise self._bad_config(f"{key}[{regex!r}] = {val!r}; it must be {what}")

    def _rank(self, module: str) -> int:
        """The rank PEFT gives `module`: its `rank_pattern` entry, else `r`."""
        for key, val in (self.config.get("rank_pattern") or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                return val
        return self.config.get("r", 8)

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
            self._check_shapes(module, parts)
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

    def _check_shapes(self, module: str, parts: dict[str, str]) -> None:
        """lora_A [r, in] and lora_B [out, r] of one rank, the configured one; a bias [out]."""
        info = {k: self.ckpt.tensors[v] for k, v in parts.items()}
        a, b = info["lora_A.weight"], info["lora_B.weight"]

        def bad(problem: str) -> CheckpointError:
            return CheckpointError(
                f"adapter {self.path}: module {module} {problem}",
                hint="the adapter file is corrupt or not written by PEFT; re-save the adapter",
            )

        for part, t in info.items():
            if not t.dtype.is_floating_point:
                raise bad(f"has a {part} of dtype {t.dtype}; LoRA weights are floating point")
        if len(a.shape) != 2 or len(b.shape) != 2:
            raise bad(f"has lora_A of shape {list(a.shape)} and lora_B of {list(b.shape)}; both must be matrices")
        rank = self._rank(module)
        if a.shape[0] != b.shape[1] or a.shape[0] != rank:
            raise bad(
                f"has lora_A {list(a.shape)} and lora_B {list(b.shape)}: their rank must be the configured r = {rank}"
            )
        bias = info.get("lora_B.bias")
        if bias is not None and tuple(bias.shape) != (b.shape[0],):
            raise bad(f"has a lora_B bias of shape {list(bias.shape)}, not [{b.shape[0]}]")
        if "lora_A.bias" in info:
            raise bad("has a lora_A bias, which PEFT never trains")

    def delta_shape(self, m: LoraModule) -> tuple[int, int]:
        out_f = self.ckpt.tensors[m.b].shape[0]
        in_f = self.ckpt.tensors[m.a].shape[1]
        return (in_f, out_f) if m.fan_in_fan_out else (out_f, in_f)

    def spell_as(self, model: Checkpoint) -> None:
        """Name the targets as `model`'s files do. PEFT names them as the loaded model's modules
        (`model.language_model.layers...`); transformers writes some architectures' files in another
        spelling (a VLM's `language_model.model.layers...`), mapped by its own renaming rules."""
        if all(t in model.tensors for t in self.modules):
            return
        from shadowft.modality import checkpoint_parts

        parts = checkpoint_parts(model.path)
        in_files = {parts.module_name(n): n for n in model.tensors}
        spelled = {t: t if t in model.tensors else in_files.get(t, t) for t in self.modules}
        self.modules = {spelled[t]: replace(m, target=spelled[t]) for t, m in self.modules.items()}

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


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
