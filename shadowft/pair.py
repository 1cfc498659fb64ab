"""Pair check: can this Base model's update be grafted onto this Instruct model?

Shadow-FT only makes sense for a Base/Instruct pair whose weights are close. This module
compares structure (config fields, tensor names and shapes, vocab, tied embeddings) and
closeness (the paper's sigma) and refuses a bad pair before any GPU hour is spent.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from shadowft.checkpoint import Checkpoint
from shadowft.errors import PairError
from shadowft.modality import ROLES, VISION_ROLES, ModelParts, checkpoint_parts
from shadowft.scope import in_scope, language_model_prefixes

# Config fields that must agree for tensors to mean the same thing.
STRUCTURAL_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "hidden_act",
)
#: the sub-configs of a vision-language model's config whose structure must match too
SUB_CONFIGS = ("text_config", "vision_config")
LAYER_TENSOR = re.compile(r"(^|\.)(layers|h|blocks)\.\d+\.")
CHUNK = 1 << 22  # elements per float32 work chunk (16 MB)
DEFAULT_MAX_SIGMA = 0.15


def tensor_sigma(a: torch.Tensor, b: torch.Tensor) -> float:
    """sigma(A, B) = sum|A - B| / (sum|A| + sum|B|), in float32, streamed in chunks."""
    a, b = a.reshape(-1), b.reshape(-1)
    diff = num_a = num_b = 0.0
    for s in range(0, a.numel(), CHUNK):
        ca, cb = a[s : s + CHUNK].float(), b[s : s + CHUNK].float()
        diff += (ca - cb).abs().sum(dtype=torch.float64).item()
        num_a += ca.abs().sum(dtype=torch.float64).item()
        num_b += cb.abs().sum(dtype=torch.float64).item()
    denom = num_a + num_b
    return 0.0 if denom == 0 else diff / denom


@dataclass
class SimilarityReport:
    """Per-tensor sigma, and its summary over the transformer-layer tensors (as the paper does)."""

    tensors: dict[str, float]
    mean: float
    median: float
    max: float
    min: float
    n_summarised: int
    #: a vision-language pair: mean sigma of each part (vision tower, projector, language model, lm_head);
    #: the summary above is the language model's
    by_role: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def sampled(t: torch.Tensor, elements: int, blocks: int = 16) -> torch.Tensor:
    """`blocks` contiguous runs spread evenly over the flat tensor, `elements` in all (the whole
    tensor when it is smaller): a zero-copy slice of a memory map reads only those pages."""
    flat = t.reshape(-1)
    n = flat.numel()
    if n <= elements:
        return flat
    run = max(1, elements // blocks)
    starts = [round(i * (n - run) / (blocks - 1)) for i in range(blocks)] if blocks > 1 else [0]
    return torch.cat([flat[s : s + run] for s in starts])


def similarity(
    a: str | Path | Checkpoint,
    b: str | Path | Checkpoint,
    progress: Callable[[str], None] | None = None,
    sample_elements: int | None = None,
    parts: ModelParts | None = None,
) -> SimilarityReport:
    """The paper's sigma for every tensor the two models share with equal shapes.

    The summary covers tensors inside `model.layers.N.` (embeddings, final norm and lm_head
    excluded), falling back to every shared tensor for models without numbered layers. With
    `sample_elements`, each tensor's sigma is measured on that many elements in evenly spread runs
    (the same positions in both models): what the graft's guard uses, so that telling a pair
    (< 0.06) from an unrelated model (~0.5) costs a small fraction of the graft. With the `parts` of
    a vision-language model, the summary is the language model's and `by_role` holds each part's mean.
    """
    ca = a if isinstance(a, Checkpoint) else Checkpoint(a, role="model A")
    cb = b if isinstance(b, Checkpoint) else Checkpoint(b, role="model B")
    values: dict[str, float] = {}
    for name, info in ca.tensors.items():
        other = cb.tensors.get(name)
        if other is None or other.shape != info.shape or not info.dtype.is_floating_point:
            continue
        va, vb = ca.view(name), cb.view(name)
        if sample_elements is not None:
            va, vb = sampled(va, sample_elements), sampled(vb, sample_elements)
        values[name] = tensor_sigma(va, vb)
        if progress:
            progress(name)
    multimodal = parts is not None and parts.multimodal
    roles = parts.roles(list(values)) if parts is not None and multimodal else {}
    summarised = {k: v for k, v in values.items() if not roles or roles[k] == "language_model"}
    layer_values = [v for k, v in summarised.items() if LAYER_TENSOR.search(k)] or list(summarised.values())
    if not layer_values:
        raise PairError(
            f"{ca.path} and {cb.path} share no tensor of equal shape",
            hint="these are not two versions of one model",
        )
    return SimilarityReport(
        tensors=values,
        mean=sum(layer_values) / len(layer_values),
        median=statistics.median(layer_values),
        max=max(layer_values),
        min=min(layer_values),
        n_summarised=len(layer_values),
        by_role={
            r: statistics.fmean(v for k, v in values.items() if roles[k] == r) for r in ROLES if r in roles.values()
        },
    )


@dataclass
class PairReport:
    """The outcome of `check_pair`: what differs, what it means for a graft, and sigma."""

    base: str
    instruct: str
    ok: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sigma: SimilarityReport | None = None
    vocab_size: dict[str, int | None] = field(default_factory=dict)
    tied_embeddings: dict[str, bool] = field(default_factory=dict)

    def to_dict(self, with_tensors: bool = False) -> dict:
        d = asdict(self)
        if d["sigma"] is not None and not with_tensors:
            d["sigma"].pop("tensors")
        return d


def config_differences(a: dict, b: dict, a_name: str = "base", b_name: str = "instruct", where: str = "") -> list[str]:
    """Structural config fields that differ (fields missing on either side are not compared), in
    a vision-language config's text and vision sub-configs too."""
    found = [
        f"config field {where}{key} differs: {a_name} {a.get(key)!r} vs {b_name} {b.get(key)!r}"
        for key in STRUCTURAL_FIELDS
        if a.get(key) is not None and b.get(key) is not None and a.get(key) != b.get(key)
    ]
    for sub in SUB_CONFIGS:
        if isinstance(a.get(sub), dict) and isinstance(b.get(sub), dict):
            found += config_differences(a[sub], b[sub], a_name, b_name, f"{where}{sub}.")
    return found


@dataclass
class Structure:
    """What must match for an update to mean the same thing in two models: the config's structural
    fields, vocab, tied embeddings, and every tensor's name and shape. A delta records its Base's."""

    config: dict
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, ckpt: Checkpoint) -> Structure:
        return cls(dict(ckpt.config), {n: tuple(t.shape) for n, t in ckpt.tensors.items()})

    def to_dict(self) -> dict:
        keys = (*STRUCTURAL_FIELDS, "vocab_size", "tie_word_embeddings")
        subs = {
            s: {k: self.config[s][k] for k in STRUCTURAL_FIELDS if k in self.config[s]}
            for s in SUB_CONFIGS
            if isinstance(self.config.get(s), dict)
        }
        return {
            "config": {**{k: self.config[k] for k in keys if k in self.config}, **subs},
            "tensors": {n: list(s) for n, s in self.shapes.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Structure:
        return cls(dict(d.get("config", {})), {n: tuple(s) for n, s in d.get("tensors", {}).items()})


def structure_problems(
    base: Structure,
    instruct: Structure,
    scope: str,
    base_name: str = "base",
    vocab_rows_ok: bool = False,
    language_model: tuple[str, ...] = (),
) -> tuple[list[str], list[str]]:
    """(errors, warnings): structural differences inside the graft scope are errors (with
    `vocab_rows_ok`, tensors that differ only in their number of rows, the vocab, are warnings).
    `language_model`: a VLM's language-model prefixes (`shadowft.scope.language_model_prefixes`)."""
    errors = config_differences(base.config, instruct.config, base_name)
    warnings: list[str] = []
    for key in ("vocab_size", "tie_word_embeddings"):
        vb, vi = base.config.get(key), instruct.config.get(key)
        if vb != vi:
            warnings.append(
                f"config field {key} differs: {base_name} {vb!r} vs instruct {vi!r} "
                "(embeddings and lm_head are not grafted by the default scope)"
            )
    only_base = sorted(set(base.shapes) - set(instruct.shapes))
    only_instruct = sorted(set(instruct.shapes) - set(base.shapes))
    for names, where in ((only_base, base_name), (only_instruct, "instruct")):
        scoped = [n for n in names if in_scope(n, scope, language_model)]
        if scoped:
            errors.append(f"{len(scoped)} tensor(s) in scope exist only in {where}: {', '.join(scoped[:5])}")
        elif names:
            warnings.append(
                f"{len(names)} tensor(s) outside the graft scope exist only in {where}: {', '.join(names[:5])}"
            )
    for name in sorted(set(base.shapes) & set(instruct.shapes)):
        sb, si = base.shapes[name], instruct.shapes[name]
        if sb != si:
            msg = f"tensor {name} has shape {list(sb)} in {base_name} but {list(si)} in instruct"
            rows_only = vocab_rows_ok and len(sb) == len(si) and sb[1:] == si[1:]
            (errors if in_scope(name, scope, language_model) and not rows_only else warnings).append(msg)
    return errors, warnings


def _structure_problems(base: Checkpoint, instruct: Checkpoint, scope: str) -> tuple[list[str], list[str]]:
    return structure_problems(
        Structure.of(base), Structure.of(instruct), scope, language_model=language_model_prefixes(instruct.path)
    )


@dataclass(frozen=True)
class PairOptions:
    """The pair check's settings, and what they are called where the user gives them: hints name
    `--force` on the command line and `pair.force` in a run config."""

    max_sigma: float = DEFAULT_MAX_SIGMA
    force: bool = False
    max_sigma_name: str = "--max-sigma"
    force_name: str = "--force"

    @classmethod
    def from_config(cls, max_sigma: float, force: bool) -> PairOptions:
        return cls(max_sigma, force, "pair.max_sigma", "pair.force")


def sigma_verdict(sigma: float, options: PairOptions, what: str = "sigma(base, instruct)") -> str | None:
    """None when `sigma` is within `options.max_sigma`; else the message (a warning when forced).
    Raises PairError when it is above and not forced."""
    if sigma <= options.max_sigma:
        return None
    msg = (
        f"{what} = {sigma:.3f} is above the threshold {options.max_sigma}: these weights are too far apart "
        "to be a Base/Instruct pair (real pairs are below 0.06, unrelated models near 0.7)"
    )
    if options.force:
        return msg + " (forced)"
    name = options.force_name
    force = f"pass {name}" if name.startswith("-") else f"set {name}: true"
    raise PairError(
        msg,
        hint=f"check the pair, or raise {options.max_sigma_name} / {force} to graft anyway",
    )


def remote_code(model_dir: str | Path) -> list[str]:
    """The custom classes a model dir asks transformers to import from its own code (`auto_map`)."""
    import json

    found: list[str] = []
    for name in ("config.json", "tokenizer_config.json"):
        f = Path(model_dir) / name
        if not f.is_file():
            continue
        try:
            auto_map = json.loads(f.read_text()).get("auto_map") or {}
        except (ValueError, AttributeError):
            continue
        for key, value in auto_map.items():
            found.append(f"{name} auto_map {key} -> {value}")
    return found


def check_remote_code(model_dir: str | Path, role: str, trust_remote_code: bool = False) -> list[str]:
    """Refuse a model that needs its own Python code unless `trust_remote_code`. -> warnings"""
    needs = remote_code(model_dir)
    if not needs:
        return []
    if not trust_remote_code:
        raise PairError(
            f"{role} model {model_dir} needs to run code shipped with the model ({needs[0]}); "
            "shadowft does not run a model's own code by default",
            hint="set pair.trust_remote_code: true only if you have read and trust that code, "
            "or use a model that transformers supports natively",
        )
    return [f"{role} model runs its own code (trust_remote_code): {', '.join(needs[:3])}"]


def vision_part_warnings(sigma: SimilarityReport, scope: str) -> list[str]:
    """A vision-language pair whose vision tower or projector differs between Base and Instruct: said,
    with what the graft does with it (copied from Instruct unless the scope grafts it)."""
    found = []
    for role in VISION_ROLES:
        value = sigma.by_role.get(role)
        if value:
            fate = (
                "copied from instruct (graft scope 'projections' grafts the language model only)"
                if scope == "projections"
                else f"grafted only where graft scope {scope!r} selects its tensors"
            )
            found.append(f"the {role.replace('_', ' ')} differs between base and instruct (sigma {value:.4f}): {fate}")
    return found


def check_pair(
    base: str | Path,
    instruct: str | Path,
    scope: str = "projections",
    max_sigma: float = DEFAULT_MAX_SIGMA,
    force: bool = False,
    compute_sigma: bool = True,
    raise_on_error: bool = True,
    progress: Callable[[str], None] | None = None,
    trust_remote_code: bool = False,
    option_names: tuple[str, str] = ("--max-sigma", "--force"),
) -> PairReport:
    """Check that `base` and `instruct` form a graftable pair; raise `PairError` if not.

    Structural differences inside the graft scope are always fatal. A sigma above `max_sigma`
    (unrelated models sit near 0.7, real pairs below 0.06) is fatal unless `force`. A model that
    needs its own code (`auto_map` in its config) is refused unless `trust_remote_code`.
    `option_names` are what hints call max_sigma and force (the CLI's options, or config keys).
    """
    code_warnings = [
        w for p, r in ((base, "base"), (instruct, "instruct")) for w in check_remote_code(p, r, trust_remote_code)
    ]
    with Checkpoint(base, role="base") as cb, Checkpoint(instruct, role="instruct") as ci:
        errors, warnings = _structure_problems(cb, ci, scope)
        warnings = code_warnings + warnings
        report = PairReport(
            base=str(base),
            instruct=str(instruct),
            ok=not errors,
            errors=errors,
            warnings=warnings,
            vocab_size={"base": cb.config.get("vocab_size"), "instruct": ci.config.get("vocab_size")},
            tied_embeddings={"base": cb.tied_embeddings, "instruct": ci.tied_embeddings},
        )
        if errors and raise_on_error:
            raise PairError(
                "base and instruct cannot be grafted:\n  - " + "\n  - ".join(errors[:12]),
                hint="use the Base model that this Instruct model was trained from (same architecture and sizes)",
            )
        if compute_sigma and not errors:
            parts = checkpoint_parts(instruct)
            report.sigma = similarity(cb, ci, progress=progress, parts=parts)
            report.warnings += vision_part_warnings(report.sigma, scope)
            options = PairOptions(max_sigma, force, *option_names)
            try:
                msg = sigma_verdict(report.sigma.mean, options)
            except PairError as exc:
                report.ok = False
                report.errors.append(exc.message)
                if raise_on_error:
                    raise
            else:
                if msg:
                    report.warnings.append(msg)
    return report
