"""A pair's modality and the roles of its tensors, read from the model's own structure.

A vision-language model (`...ForConditionalGeneration` with a `vision_config`) has four parts: the
vision tower, the projector that maps image features into the language model, the language model
and the output head. Training freezes the tower and projector by default (as LLaMA-Factory does),
LoRA targets the language model's linear layers, and the graft's default scope is the language
model's projections; the tower and projector are copied from Instruct. The seams read these roles;
no stage branches on the modality.

Roles come from the module tree, not from name patterns: the model class is instantiated on the
meta device from `config.json` (no weights, no memory), the decoder is `get_decoder()`, the head is
`get_output_embeddings()`, the vision tower is the sub-model whose config is the vision config, and
the rest of the multimodal wrapper is the projector. Checkpoint names written by older transformers
(`language_model.model.layers...`) are mapped to the module names with transformers' own renaming
rules for the architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

Role = Literal["vision_tower", "projector", "language_model", "lm_head"]
ROLES: tuple[Role, ...] = ("vision_tower", "projector", "language_model", "lm_head")
#: the parts of a VLM that are not the language model: frozen in training, copied in the graft by default
VISION_ROLES: tuple[Role, ...] = ("vision_tower", "projector")


def is_multimodal(model_dir: str | Path) -> bool:
    """Whether the model dir holds a vision-language model (its config has a vision config)."""
    return "vision_config" in _config(Path(model_dir))


def _config(model_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class ModelParts:
    """Where each role sits in a model: module-name prefixes per role, the same prefixes as the
    model's checkpoint files spell them, and transformers' renaming rules from file to module names."""

    multimodal: bool
    prefixes: dict[str, tuple[str, ...]]
    renamings: tuple[Any, ...] = field(default=())  # transformers' WeightRenaming rules (file -> module names)
    file_prefixes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def module_name(self, name: str) -> str:
        """A checkpoint tensor name as the loaded model calls it (transformers' own renaming)."""
        if not self.renamings:
            return name
        from transformers.core_model_loading import rename_source_key

        return rename_source_key(name, list(self.renamings), [])[0]

    def role(self, name: str) -> Role:
        """The role of tensor (or module) `name`, in checkpoint or module spelling: the longest
        matching prefix; a name under no prefix belongs to the language model."""
        module = self.module_name(name)
        best: tuple[int, Role] = (-1, "language_model")
        for role, prefixes in self.prefixes.items():
            for p in prefixes:
                if (module == p or module.startswith(p + ".")) and len(p) > best[0]:
                    best = (len(p), role)  # type: ignore[assignment]
        return best[1]

    def roles(self, names: list[str] | tuple[str, ...]) -> dict[str, Role]:
        return {n: self.role(n) for n in names}

    def spellings(self, role: Role) -> tuple[str, ...]:
        """The role's name prefixes as the loaded model spells them and as its files do."""
        return tuple(dict.fromkeys((*self.prefixes.get(role, ()), *self.file_prefixes.get(role, ()))))

    def to_dict(self) -> dict[str, Any]:
        return {"multimodal": self.multimodal, "prefixes": {k: list(v) for k, v in self.prefixes.items()}}


def module_parts(model: Any) -> ModelParts:
    """The roles of a loaded (or meta) model's modules, from its structure."""
    names = {id(m): n for n, m in model.named_modules()}
    prefixes: dict[str, list[str]] = {r: [] for r in ROLES}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head) in names:
        prefixes["lm_head"].append(names[id(head)])
    vision_config = getattr(model.config, "vision_config", None)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if vision_config is None or decoder is None or id(decoder) not in names:
        return ModelParts(False, {k: tuple(v) for k, v in prefixes.items() if v})
    lm = names[id(decoder)]
    prefixes["language_model"].append(lm)
    wrapper = lm.rpartition(".")[0]
    parent = model.get_submodule(wrapper) if wrapper else model
    for child_name, child in parent.named_children():
        full = f"{wrapper}.{child_name}" if wrapper else child_name
        if full in (lm, *prefixes["lm_head"]):
            continue
        if type(getattr(child, "config", None)) is type(vision_config):
            prefixes["vision_tower"].append(full)
            # Qwen2-VL keeps its projector (the patch merger) inside the vision model, as LLaMA-Factory notes
            merger = getattr(child, "merger", None)
            if merger is not None and id(merger) in names:
                prefixes["projector"].append(names[id(merger)])
        elif any(True for _ in child.parameters()):
            prefixes["projector"].append(full)
    return ModelParts(True, {k: tuple(v) for k, v in prefixes.items() if v})


@lru_cache(maxsize=32)
def _parts_for_config(config_json: str) -> ModelParts:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    cfg = json.loads(config_json)
    config = AutoConfig.for_model(**cfg)
    auto = AutoModelForImageTextToText if "vision_config" in cfg else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    parts = module_parts(model)
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping
    except ImportError:  # transformers < 5: checkpoints and modules share their names
        return parts
    renamings = tuple(r for r in get_model_conversion_mapping(model) if isinstance(r, WeightRenaming))
    return ModelParts(parts.multimodal, parts.prefixes, renamings)


def checkpoint_parts(model_dir: str | Path) -> ModelParts:
    """The roles of a model dir's tensors (from its config alone: the model is built on the meta device).
    A text model: every tensor is the language model's but the head."""
    cfg = _config(Path(model_dir))
    if "vision_config" not in cfg:
        return ModelParts(False, {"lm_head": ("lm_head",)})
    parts = _parts_for_config(json.dumps(cfg, sort_keys=True))
    return replace(parts, file_prefixes=_file_prefixes(parts, Path(model_dir)))


def _file_prefixes(parts: ModelParts, model_dir: Path) -> dict[str, tuple[str, ...]]:
    """Each role's prefixes as the dir's files spell them: a file name whose module name is
    `<module prefix><rest>` and which ends in `<rest>` is spelled `<file prefix><rest>`."""
    from shadowft.checkpoint import Checkpoint

    try:
        with Checkpoint(model_dir) as ckpt:
            names = list(ckpt.tensors)
    except Exception:  # no weights yet (a config-only dir): module spelling only
        return {}
    found: dict[str, dict[str, None]] = {}
    for name in names:
        module = parts.module_name(name)
        for role, prefixes in parts.prefixes.items():
            for p in prefixes:
                rest = module[len(p) :]
                if module.startswith(p + ".") and name.endswith(rest) and name != module:
                    found.setdefault(role, {})[name[: len(name) - len(rest)]] = None
    return {role: tuple(v) for role, v in found.items()}


def role_counts(parts: ModelParts, names: list[str]) -> dict[str, int]:
    """How many of `names` each role holds (roles with none left out)."""
    counts: dict[str, int] = {}
    for n in names:
        r = parts.role(n)
        counts[r] = counts.get(r, 0) + 1
    return counts
