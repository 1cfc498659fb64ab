"""The run configuration: one typed model that is the YAML file format, the CLI input and the flow's
parameter (the Prefect UI renders it as a form from the field descriptions).

Defaults are the published Shadow-FT method's defaults: LoRA lr 2e-4, rank 8, lora_alpha 2*rank,
dropout 0, all linear layers except lm_head; full FT lr 1e-5; 1 epoch, cosine, warmup ratio 0.1,
cutoff length 4096, 2000 samples; graft alpha 1.0 over the attention/MLP projections.

Placeholders: a model or data source written as ``zoo:NAME`` (``zoo:base``, ``zoo:instruct``,
``zoo:train``) names a member of the embedded tiny family; `RunConfig.resolve` swaps them for real
paths (the orchestration layer builds or finds the family and passes the mapping).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shadowft.errors import ShadowFTError
from shadowft.evaluate.backends import BACKENDS
from shadowft.graft.registry import METHODS as GRAFT_METHODS
from shadowft.graft.registry import make_method, resolve_method_name
from shadowft.registry import registered_name, section_key, settings_for, with_settings_sections
from shadowft.train.launchers import LAUNCHERS
from shadowft.train.objectives import OBJECTIVES, get_objective

ZOO_PREFIX = "zoo:"

#: The paper's LoRA targets: every linear layer except lm_head (Llama/Qwen/Mistral/Gemma naming).
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

Method = Literal["lora", "full"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Scheduler = Literal[
    "cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr", "polynomial", "inverse_sqrt"
]
DataFormat = Literal["auto", "messages", "sharegpt", "alpaca"]
Baseline = Literal["instruct", "direct", "tuned-base"]
Distributed = Literal["auto", "none", "ddp", "fsdp", "deepspeed"]
ReportTo = Literal["none", "tensorboard", "wandb", "mlflow"]
AttnImplementation = Literal["auto", "sdpa", "eager", "flash_attention_2"]


#: Bounds for values that are otherwise accepted and fail only late (in training, after evaluation).
MAX_BATCH = 1 << 16
MAX_COUNT = 10**9  # steps, samples, examples: more would never finish
MAX_PROCS = 1024
MAX_SEED = 2**32 - 1  # numpy's seed range (transformers.set_seed seeds numpy too)
MAX_NAME = 200  # output.name is a folder name: at most 255 bytes on common filesystems
MAX_PATH_PART = 255


class _Section(BaseModel):
    # inf / nan are refused in every float (GraftConfig checks its own, with messages of its own)
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=False, allow_inf_nan=False
    )

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        """A NUL character in a name or path fails only when the path is used (os calls refuse it)."""
        if _has_nul(v):
            raise ValueError("must not contain a NUL character")
        return v


def _has_nul(v: Any) -> bool:
    if isinstance(v, str):
        return "\x00" in v
    if isinstance(v, list):
        return any(_has_nul(x) for x in v)
    if isinstance(v, dict):
        return any(_has_nul(k) or _has_nul(x) for k, x in v.items())
    return False


class PairConfig(_Section):
    """The paired models: Base (the shadow that is trained) and Instruct (that receives the update)."""

    base: str = Field(
        default="zoo:base",
        description="Base model: a local HF model dir or a hub id (e.g. Qwen/Qwen3-4B-Base); "
        "'zoo:base' is the embedded tiny family.",
    )
    instruct: str = Field(
        default="zoo:instruct",
        description="Instruct model paired with the Base (same architecture and vocabulary): local dir or hub id; "
        "'zoo:instruct' is the embedded tiny family.",
    )
    base_revision: str | None = Field(
        default=None, description="Hub revision (branch, tag or commit) of the Base model."
    )
    instruct_revision: str | None = Field(
        default=None, description="Hub revision (branch, tag or commit) of the Instruct model."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow model code from the hub repo to run (only for repos you trust)."
    )
    max_sigma: float = Field(
        default=0.15,
        gt=0,
        le=1,
        description="Refuse the pair when the mean weight distance sigma(base, instruct) exceeds this "
        "(published pairs are below 0.06).",
    )
    force: bool = Field(default=False, description="Continue even when the pair check fails.")

    @field_validator("base", "instruct")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model dir or hub id")
        return v.strip()


class DataConfig(_Section):
    """Training data: read, formatted with the Instruct chat template, tokenized, loss on assistant tokens."""

    sources: list[str] = Field(
        default_factory=lambda: ["zoo:train"],
        min_length=1,
        description="Local .jsonl / .json / .parquet files, or `datasets` names (offline: only cached ones); "
        "a LLaMA-Factory data set as PATH/dataset_info.json#NAME; 'zoo:train' is the embedded toy data "
        "('zoo:tools' its tool-calling set).",
    )
    format: DataFormat = Field(
        default="auto",
        description="Record format: messages (role/content), sharegpt (from/value), alpaca "
        "(instruction/input/output), or auto (detected per file).",
    )
    max_length: int = Field(
        default=4096,
        ge=8,
        le=1 << 24,
        description="Cutoff length in tokens (prompt + answer, after the chat template).",
    )
    max_samples: int | None = Field(
        default=2000,
        ge=1,
        le=MAX_COUNT,
        description="Use at most this many conversations (in source order); empty = all.",
    )
    split: str = Field(default="train", description="Split to read from a `datasets` name (ignored for local files).")
    overlong: Literal["truncate", "drop"] = Field(
        default="truncate", description="What to do with samples longer than max_length: truncate them or drop them."
    )
    system_prompt: str | None = Field(
        default=None, description="System message added to conversations that have none; empty = none added."
    )
    packing: bool = Field(
        default=False,
        description="Train on several conversations per sequence, padding-free (position ids restart per "
        "conversation, so none attends to another); needs an attention implementation that supports it "
        "(sdpa, flash_attention_2).",
    )
    validation_ratio: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Hold out this fraction of the prepared conversations (a fixed, seeded choice) as a "
        "validation split that training never sees; used by graft.alpha auto. 0 = none.",
    )
    validation_sources: list[str] = Field(
        default_factory=list,
        description="Files (or `datasets` names) prepared as the validation split instead of a held-out "
        "fraction (same format, chat template and masking as the training data).",
    )
    max_record_mb: float = Field(
        default=16.0,
        gt=0,
        description="Refuse a record (a JSONL line, a JSON array item, a row's text) larger than this many "
        "MB (10^6 bytes), naming its file and line, before it is parsed or tokenized.",
    )

    @property
    def has_validation(self) -> bool:
        return self.validation_ratio > 0 or bool(self.validation_sources)

    def cache_view(self) -> dict[str, Any]:
        """The data stage's settings for its key (sources are inputs); the validation fields are left
        out at their defaults, so data prepared before they existed keeps its key."""
        # max_record_mb only refuses input (it never changes what is prepared): not in the key
        exclude = {"sources", "validation_sources", "max_record_mb"} | (
            {"validation_ratio"} if not self.validation_ratio else set()
        )
        return self.model_dump(mode="json", exclude=exclude)

    @field_validator("sources")
    @classmethod
    def _sources_not_blank(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise ValueError("a source is empty")
        return [s.strip() for s in v]


#: Keys of the train section that moved into an objective's sub-section (refused with the new spelling).
_MOVED_TRAIN_KEYS = {
    "dpo_beta": "train.dpo.beta",
    "dpo_loss": "train.dpo.loss",
    "accelerate_config": "train.accelerate.config",
}


@with_settings_sections(LAUNCHERS, selector="train.launcher")
@with_settings_sections(OBJECTIVES, selector="train.objective")
class TrainConfig(_Section):
    """Fine-tuning of the Base model (and of the Instruct model for the `direct` baseline)."""

    objective: registered_name(OBJECTIVES, "objective") = Field(  # type: ignore[valid-type]
        default="sft",
        description="The training loss: sft (next-token cross-entropy on the assistant replies), dpo "
        "(direct preference optimisation with TRL on prompt/chosen/rejected data; Shadow-DPO), kto "
        "(TRL's KTO on desirable / undesirable completions; Shadow-KTO) or grpo (TRL's GRPO with verifiable "
        "rewards on prompts; Shadow-RL). Its settings, if any, are the sub-section of the same name "
        "(train.dpo, train.kto, train.grpo).",
    )
    method: Method = Field(default="lora", description="lora (train a low-rank adapter) or full (all weights).")
    lr: float | None = Field(
        default=None,
        gt=0,
        description="Peak learning rate; empty = the default for the method and objective (SFT: LoRA 2e-4, "
        "full 1e-5, the paper's; DPO and KTO: LoRA 5e-6 as LLaMA-Factory's examples, full 5e-7).",
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COUNT,
        description="Stop after this many optimizer steps (overrides epochs); empty = by epochs.",
    )
    batch_size: int = Field(default=4, ge=1, le=MAX_BATCH, description="Sequences per device per forward pass.")
    grad_accum: int = Field(
        default=8,
        ge=1,
        le=MAX_BATCH,
        description="Gradient accumulation steps; global batch = batch_size x grad_accum x devices (paper: 32).",
    )
    scheduler: Scheduler = Field(default="cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="Fraction of steps with linear warmup.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm (0 = no clipping).")
    lora_rank: int = Field(default=8, ge=1, le=MAX_BATCH, description="LoRA rank r.")
    lora_alpha: float | None = Field(
        default=None, gt=0, description="LoRA scaling alpha (update = alpha/r * B A); empty = 2 x rank."
    )
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        min_length=1,
        description="Module names that get adapters; default all linear layers except lm_head. "
        "['all-linear'] lets PEFT find them for other architectures. In a vision-language model only the "
        "language model's modules of these names get adapters.",
    )
    freeze_vision_tower: bool = Field(
        default=True,
        description="Vision-language pairs: keep the vision tower (image encoder) frozen, as LLaMA-Factory does. "
        "false trains it too (full: its weights; lora: adapters on all its linear layers). Text pairs ignore it.",
    )
    freeze_projector: bool = Field(
        default=True,
        description="Vision-language pairs: keep the multimodal projector (image features -> language model) "
        "frozen. false trains it too (full: its weights; lora: adapters on its linear layers). Text pairs ignore it.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass (less memory, ~30% slower)."
    )
    seed: int = Field(
        default=42, ge=0, le=MAX_SEED, description="Seed for initialisation, data order and dropout (0 to 2^32-1)."
    )
    precision: Precision = Field(
        default="auto", description="auto = bf16 on a GPU that supports it, else fp32; or fp32 / bf16 / fp16."
    )
    full_save_dtype: Literal["fp32", "model"] = Field(
        default="fp32",
        description="Dtype of a fully fine-tuned model on disk: fp32 keeps small updates exact for the delta "
        "(recommended), model = the checkpoint's own dtype.",
    )
    save_steps: int = Field(
        default=25, ge=1, le=MAX_COUNT, description="Write a resumable checkpoint every this many steps."
    )
    save_total_limit: int = Field(default=2, ge=1, le=MAX_COUNT, description="Keep at most this many checkpoints.")
    logging_steps: int = Field(
        default=1, ge=1, le=MAX_COUNT, description="Record loss and learning rate every this many steps."
    )
    # -- how and where the training runs (launched jobs: shadowft.train.launchers) --
    distributed: Distributed = Field(
        default="auto",
        description="Multi-process strategy: auto (none for one process, ddp for several), none, ddp (a full "
        "replica per process), fsdp or deepspeed (ZeRO-3: weights, gradients and optimizer states sharded; "
        "GPU only). Global batch = batch_size x grad_accum x num_processes x num_nodes.",
    )
    num_processes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PROCS,
        description="Processes (ranks) per node; empty = the visible GPUs (1 on CPU). More than one starts a "
        "launched job (torchrun / accelerate launch).",
    )
    num_nodes: int = Field(default=1, ge=1, le=MAX_BATCH, description="Machines the job spans (torchrun --nnodes).")
    node_rank: int = Field(default=0, ge=0, description="This machine's rank among num_nodes (0 = the main node).")
    main_address: str = Field(
        default="127.0.0.1", description="Rendezvous address: the main node's host name or IP (torchrun --master_addr)."
    )
    main_port: int = Field(default=29500, ge=1, le=65535, description="Rendezvous port on the main node.")
    launcher: registered_name(LAUNCHERS, "launcher", extra=("auto",)) = Field(  # type: ignore[valid-type]
        default="auto",
        description="How the processes start: auto (in-process for one, torchrun for ddp, accelerate launch "
        "for fsdp / deepspeed or with train.accelerate.config) or a launcher by name.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PROCS,
        description="CPU threads per process for torch; empty = 1 for models under 50M parameters (more "
        "threads only contend on a shared CPU), else the physical cores divided among the local processes. "
        "Fixed by the config, never by the machine's momentary load.",
    )
    attn_implementation: AttnImplementation = Field(
        default="auto",
        description="Attention kernel: auto (flash_attention_2 on a GPU where it is installed, else sdpa), "
        "sdpa, eager or flash_attention_2.",
    )
    report_to: ReportTo = Field(
        default="none",
        description="Experiment tracker: none, tensorboard (offline event files in the run's work dir), wandb or "
        "mlflow (credentials only from their environment variables).",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Settings that moved into an objective's sub-section fail with their new spelling."""
        if isinstance(data, dict):
            for old, new in _MOVED_TRAIN_KEYS.items():
                if old in data:
                    raise ValueError(f"train.{old} is now {new}")
        return data

    @model_validator(mode="after")
    def _objective_accepts(self) -> TrainConfig:
        """What the objective's trainer would refuse only once it starts (e.g. KTO's batch of one)."""
        get_objective(self.objective).check_train(self)
        return self

    @field_validator("node_rank")
    @classmethod
    def _rank_in_nodes(cls, v: int, info: ValidationInfo) -> int:
        nodes = info.data.get("num_nodes")
        if nodes is not None and v >= nodes:
            raise ValueError(f"must be less than train.num_nodes ({nodes})")
        return v

    @field_validator("lora_targets")
    @classmethod
    def _targets_not_blank(cls, v: list[str]) -> list[str]:
        if any(not t.strip() for t in v):
            raise ValueError("a target module name is empty")
        if "lm_head" in v:
            raise ValueError("lm_head is not adapted in Shadow-FT (its update is not grafted)")
        return v

    @property
    def effective_lr(self) -> float:
        """The learning rate used: `lr`, or the method's published default."""
        if self.lr is not None:
            return self.lr
        return get_objective(self.objective).default_lr[self.method]

    @property
    def objective_settings(self) -> Any:
        """The chosen objective's settings (its sub-section, e.g. train.dpo)."""
        return get_objective(self.objective).settings(self)

    def cache_view(self, exclude: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
        """The train stage's settings for its key: defaults resolved (`lr: null` and the default lr give
        the same key), the other methods' fields and the other objectives' sub-sections left out (so an
        SFT key does not move when an objective is added), settings that change how the stage runs
        but not what it produces (`_NOT_IN_KEY`, plus `exclude`) left out. The launcher is not keyed
        (the machine picks it, every launcher trains the same model); what its settings change is
        (`Launcher.cache_key`, e.g. accelerate's config file), for every registered launcher."""
        other_methods = set().union(*(f for m, f in METHOD_FIELDS.items() if m != self.method))
        fields = type(self).model_fields
        other_objectives = {section_key(n) for n in OBJECTIVES if n != self.objective and section_key(n) in fields}
        launchers = {section_key(n) for n in LAUNCHERS if section_key(n) in fields}
        left_out = set(exclude) | _NOT_IN_KEY["train"] | other_methods | other_objectives | launchers
        # the freeze settings at their defaults are left out: keys from before they existed stay valid
        left_out |= {f for f in ("freeze_vision_tower", "freeze_projector") if getattr(self, f)}
        view = self.model_dump(mode="json", exclude=left_out)
        for name, launcher in LAUNCHERS.items():
            view.update(launcher.cache_key(settings_for(self, LAUNCHERS, name)))  # type: ignore[arg-type]
        view.update(get_objective(self.objective).cache_key(self))  # e.g. a user's reward module's content
        view["lr"] = self.effective_lr
        if self.method == "lora":
            view["lora_alpha"] = self.effective_lora_alpha
        return view

    @property
    def effective_lora_alpha(self) -> float:
        """The LoRA alpha used: `lora_alpha`, or 2 x rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank


def _differs_from_defaults(section: Any, model: type[BaseModel]) -> bool:
    """Whether a method's sub-section, as given, holds settings other than its defaults."""
    if isinstance(section, BaseModel):
        section = section.model_dump(mode="json")
    try:
        return model.model_validate(section).model_dump(mode="json") != model().model_dump(mode="json")
    except (ValidationError, ValueError, TypeError):
        return True


@with_settings_sections(GRAFT_METHODS, selector="graft.method")
class GraftConfig(_Section):
    """Grafting the Base update onto Instruct: W_new = W_instruct + alpha * (W_base_tuned - W_base)."""

    # its validators refuse inf / nan themselves, with their own messages
    model_config = ConfigDict(allow_inf_nan=True)

    alpha: float | Literal["auto"] = Field(
        default=1.0,
        description="Scale of the grafted update (paper: 1.0; must be > 0 and <= 10), or auto: the alpha of "
        "alpha_grid with the lowest loss on the validation split (data.validation_ratio or "
        "data.validation_sources) among those that keep the retention suites.",
        # the number's range for the UI form (JSON Schema's numeric keywords do not apply to "auto")
        json_schema_extra={"exclusiveMinimum": 0, "maximum": 10},
    )
    alpha_grid: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75, 1.0, 1.25],
        min_length=1,
        description="Candidate alphas for alpha: auto (each is a cached graft).",
    )
    retention: dict[str, float] = Field(
        default_factory=dict,
        description="For alpha: auto, {suite: max_drop}: a candidate may score at most max_drop points (of 100) "
        "below Instruct on each suite; empty = no retention rule, and the validation loss alone picks alpha "
        "(on data in another answer style than Instruct's it picked the largest alpha every time: docs/RESULTS.md).",
    )
    scope: str = Field(
        default="projections",
        description="Which tensors get the update: projections (q/k/v/o/gate/up/down proj, as published), "
        "all, or a regular expression matched against tensor names.",
    )
    method: registered_name(GRAFT_METHODS, "graft method") | None = Field(  # type: ignore[valid-type]
        default=None,
        description="How the update is combined with Instruct: linear (W_I + alpha * update), per_module "
        "(an alpha per module), dare (random drop and rescale) or ties (top magnitudes); its settings are the "
        "sub-section of the same name (graft.per_module, graft.dare, graft.ties). Empty = the method whose "
        "sub-section is set to other than its defaults, else linear.",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_method(cls, data: Any) -> Any:
        """Old spellings of a method's settings at the top of the section (graft.alpha_by_module)
        keep working: moved into the method's sub-section (graft.per_module.alpha_by_module). An
        empty method is resolved here, from the sub-sections given (so a dumped config names its
        method), and another method's sub-section with settings of its own is an error, not ignored."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, method in GRAFT_METHODS.items():
            moved = {k: data.pop(k) for k in method.legacy_keys if k in data}
            moved = {k: v for k, v in moved.items() if v}  # `alpha_by_module: {}` of older examples: not given
            if not moved:
                continue
            section = data.get(name)
            section = section.model_dump(exclude_unset=True) if isinstance(section, BaseModel) else dict(section or {})
            both = sorted(k for k in set(moved) & set(section) if section[k])  # an empty `{}`: not given
            if both:
                raise ValueError(
                    f"graft.{both[0]} is the old spelling of graft.{name}.{both[0]}: give only the new one"
                )
            data[name] = {**section, **moved}
        # a sub-section that holds only its defaults (as examples/toy.yaml lists them) names no method
        given = [
            n
            for n in GRAFT_METHODS
            if data.get(n) is not None
            and n in cls.model_fields
            and _differs_from_defaults(data[n], GRAFT_METHODS[n].Params)
        ]
        try:
            chosen = resolve_method_name(data.get("method"), given)
        except ShadowFTError as exc:
            raise ValueError(f"{exc.message}; {exc.hint}") from None
        if chosen not in GRAFT_METHODS:
            return data  # the name field's own validation says which names there are
        data["method"] = chosen
        for name in given:
            if name != chosen:
                raise ValueError(
                    f"graft.{name} is set but graft.method is {chosen}: set graft.method: {name}, or drop graft.{name}"
                )
        return data

    @field_validator("scope")
    @classmethod
    def _scope_valid(cls, v: str) -> str:
        if v in ("projections", "all"):
            return v
        if not v.strip():
            raise ValueError("must be 'projections', 'all' or a regular expression")
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not 'projections', 'all' or a valid regular expression ({exc})") from None
        return v

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_finite(cls, v: Any) -> Any:
        """nan passes both range checks below (every comparison with it is false) and failed at the graft."""
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number (or auto)")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, v: float | str) -> float | str:
        if v != "auto" and float(v) <= 0:
            raise ValueError("must be greater than 0 (or auto)")
        if v != "auto" and float(v) > 10:
            raise ValueError("must be at most 10 (or auto)")
        return v

    @field_validator("alpha_grid")
    @classmethod
    def _grid_valid(cls, v: list[float]) -> list[float]:
        if any(not (0 < a <= 10) for a in v):
            raise ValueError("every candidate alpha must be > 0 and <= 10")
        return sorted(dict.fromkeys(float(a) for a in v))

    @field_validator("retention")
    @classmethod
    def _retention_valid(cls, v: dict[str, float]) -> dict[str, float]:
        if any(not (0 <= d <= 100) for d in v.values()):
            raise ValueError("max_drop is in points of 100, between 0 and 100")
        return v

    @property
    def numeric_alpha(self) -> float:
        """alpha as a number (auto: 1.0, for checks that need one before the choice is made)."""
        return 1.0 if self.alpha == "auto" else float(self.alpha)

    def candidate(self, alpha: float) -> GraftConfig:
        """This graft with a fixed alpha: one candidate of alpha: auto (its cache key is that of a
        plain graft with that alpha)."""
        return self.model_copy(update={"alpha": float(alpha)})

    def selection_view(self) -> dict[str, Any]:
        """The settings of the alpha selection (its cache key)."""
        return {
            "alpha_grid": list(self.alpha_grid),
            "retention": dict(self.retention),
            **self.candidate(1.0).cache_view(),
        }

    @model_validator(mode="after")
    def _method_takes_settings(self) -> GraftConfig:
        """An unknown method, settings of several methods without a name, or settings the method
        refuses (per_module without rules) fail with the config, not after training."""
        try:
            make_method(self.effective_method, self.numeric_alpha, self.method_settings)
        except ShadowFTError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def effective_method(self) -> str:
        """The method the graft runs (`shadowft.graft.registry.resolve_method_name`: as named, else
        the one whose sub-section is given, else linear)."""
        return resolve_method_name(self.method)  # resolved when validated (`_resolve_method`)

    @property
    def method_settings(self) -> dict[str, Any]:
        """The chosen method's own settings (its sub-section; defaults when it has none)."""
        held = getattr(self, self.effective_method, None) if self.effective_method in type(self).model_fields else None
        return held.model_dump(mode="json") if isinstance(held, BaseModel) else {}

    def cache_view(self) -> dict[str, Any]:
        """The settings that change the grafted weights, as JSON data for cache keys.

        The method is resolved (unset and `linear` give one key) and left out, with its settings,
        when it is the default `linear`, so artifacts made before methods existed keep their keys;
        otherwise its name and its `cache_settings` (only the chosen method's sub-section).
        """
        sections = {section_key(n) for n in GRAFT_METHODS if section_key(n) in type(self).model_fields}
        view = self.model_dump(mode="json", exclude={"method", "alpha_grid", "retention"} | sections)
        name = self.effective_method
        if name != "linear":
            method = GRAFT_METHODS[name]
            view["method"] = name
            view.update(method.cache_settings(method.Params.model_validate(self.method_settings)))
        return view


@with_settings_sections(BACKENDS, selector="eval.backend")
class EvalConfig(_Section):
    """Evaluation with lm-eval: suites are groups of tasks (coding, math, reasoning)."""

    suites: list[str] = Field(
        default_factory=lambda: ["toy-math", "toy-coding", "toy-reasoning"],
        min_length=1,
        description="Suites (or lm-eval task names) to run on every model.",
    )
    limit: int | None = Field(
        default=None, ge=1, le=MAX_COUNT, description="At most this many examples per task; empty = all."
    )
    batch_size: int = Field(default=8, ge=1, le=MAX_BATCH, description="Evaluation batch size.")
    apply_chat_template: bool | None = Field(
        default=None,
        description="Wrap prompts in the model's chat template; empty = yes for Instruct and grafted models "
        "(as in the paper).",
    )
    backend: registered_name(BACKENDS, "evaluation backend") = Field(  # type: ignore[valid-type]
        default="hf",
        description="How the model runs under lm-eval: hf (transformers, one device) or vllm (lm-eval's vLLM "
        "model: needs the `vllm` extra and a GPU) for text models; hf-multimodal (transformers) or vllm-vlm (vLLM, "
        "GPU) for vision-language models: a VLM pair (Gemma-3 pt/it, ...) needs one of these.",
    )
    fewshot_as_multiturn: bool = Field(
        default=True,
        description="With the chat template, give few-shot examples as earlier user/assistant turns (lm-eval's "
        "fewshot_as_multiturn); off = all examples in one user turn.",
    )
    enable_thinking: bool | None = Field(
        default=None,
        description="Qwen3's thinking switch, passed to the chat template (enable_thinking); empty = the "
        "template's default. The paper evaluates Qwen3 with thinking off.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for torch while evaluating; empty = as train.threads' default (1 for models "
        "under 50M parameters, else the physical cores). Recorded in each results.json.",
    )
    request_cache: bool = Field(
        default=True,
        description="Keep each answered request in an SQLite cache in the stage's work dir, so a killed "
        "evaluation re-run answers the finished requests from it (lm-eval's request keys; answers stored as "
        "JSON, never as pickles).",
    )
    own_data: bool = Field(
        default=True,
        description="Also evaluate every model on the held-out split of your own data (suite `own-data`: the "
        "greedy reply to each held-out prompt against its reference, exact match and chrF), when the data has "
        "a validation split (data.validation_ratio or data.validation_sources); off = the suites only.",
    )

    @property
    def backend_settings(self) -> BaseModel | None:
        """The chosen backend's settings (its sub-section, e.g. eval.vllm); None when it has none."""
        return settings_for(self, BACKENDS, self.backend)

    def cache_view(self) -> dict[str, Any]:
        """The eval stage's settings for its key: settings that do not change the results
        (`_NOT_IN_KEY`) and the other backends' sub-sections left out (engine settings count only
        for the engine that reads them)."""
        others = {section_key(n) for n in BACKENDS if n != self.backend and section_key(n) in type(self).model_fields}
        return self.model_dump(mode="json", exclude=_NOT_IN_KEY["eval"] | others)


class ResourcesConfig(_Section):
    """How many heavy stages (training, evaluation) run at once, and on which GPUs.

    Each running heavy stage holds a slot; with more than one slot, or on GPUs, it runs in its own
    process that sees only its devices (CUDA_VISIBLE_DEVICES). Stages that depend on each other
    still wait for each other."""

    slots: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PROCS,
        description="Heavy stages that may run at once; empty = visible GPUs // devices_per_stage (1 on CPU).",
    )
    devices: list[int] | None = Field(
        default=None, description="GPU indices the stages may use; empty = every visible GPU."
    )
    devices_per_stage: int = Field(
        default=1,
        ge=1,
        le=MAX_PROCS,
        description="GPUs each heavy stage gets (a multi-process training or a tensor-parallel vLLM "
        "evaluation needs as many as it has processes).",
    )
    cluster: str = Field(
        default="local",
        description="Where heavy stages run: local (this machine, in slots), auto (the Ray cluster this "
        "machine belongs to, after `ray start`) or ray://HOST:PORT (a Ray cluster's client address). With "
        "Ray, each heavy stage is a Ray task asking for devices_per_stage GPUs (none on a CPU-only cluster) "
        "and cpus_per_stage CPUs, placed by Ray; the store and Prefect's result storage must be on storage "
        "every node sees, and the run needs a Prefect server (PREFECT_API_URL) every node reaches.",
    )
    cpus_per_stage: int = Field(
        default=1, ge=1, le=1024, description="CPUs a heavy stage asks a Ray cluster for (resources.cluster)."
    )

    @field_validator("cluster")
    @classmethod
    def _cluster_address(cls, v: str) -> str:
        if v in ("local", "auto") or re.fullmatch(r"ray://[\w.\-]+:\d+", v):
            return v
        raise ValueError("use local, auto or ray://HOST:PORT")

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if any(d < 0 or d >= MAX_PROCS for d in v):
                raise ValueError(f"GPU indices are 0 to {MAX_PROCS - 1}")
            if len(set(v)) != len(v):
                raise ValueError("a GPU is listed twice")
        return v


class OutputConfig(_Section):
    """Where the run writes its artifacts and reports."""

    root: str = Field(default="./runs", description="Directory for runs, reports and the artifact store.")
    name: str | None = Field(
        default=None,
        description="Run name: the run folder is <root>/<name>/<time>/ (default name: shadow-ft), and the "
        "report's title.",
    )
    promote: bool = Field(
        default=False,
        description="Promotion gate for re-tunes: make this run's Shadow-FT model <root>/<name>/promoted only "
        "if no suite drops more than max_regression points against the promoted one; otherwise the run fails.",
    )
    max_regression: float = Field(
        default=1.0, ge=0, description="Largest drop in % points on any suite that promotion accepts."
    )

    @field_validator("name")
    @classmethod
    def _name_fits_a_folder(cls, v: str | None) -> str | None:
        """The name becomes a folder name: one too long failed with ENAMETOOLONG after evaluation."""
        if v is not None and len(v) > MAX_NAME:
            raise ValueError(f"must be at most {MAX_NAME} characters (it names the run folder; got {len(v)})")
        return v

    @field_validator("root")
    @classmethod
    def _root_is_a_usable_path(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a directory")
        for part in Path(v).expanduser().parts:
            if len(part.encode("utf-8", "surrogatepass")) > MAX_PATH_PART:
                raise ValueError(f"the path component {part[:40]!r}... is longer than {MAX_PATH_PART} bytes")
        return v


#: The stages of a run, in order; each one's spec in `shadowft.stages` owns its cache key.
#: (The `direct` baseline is the train stage applied to Instruct, not a stage of its own.)
STAGES = ("pair", "data", "train", "delta", "graft", "eval", "report")

# Fields that change how a stage runs but not what it produces (left out of the sections' cache_view).
# (pair.force is keyed: a forced pair check records its "(forced)" warning in pair.json.)
_NOT_IN_KEY = {
    "train": {"save_steps", "save_total_limit", "node_rank", "main_address", "main_port", "report_to", "launcher"},
    "eval": {"batch_size", "request_cache", "threads", "own_data"},  # own_data: the eval's data input instead
}
#: TrainConfig fields that only one training method reads (the others' are left out of its key).
METHOD_FIELDS: dict[str, set[str]] = {
    "lora": {"lora_rank", "lora_alpha", "lora_dropout", "lora_targets"},
    "full": {"full_save_dtype"},
}


class RunConfig(BaseModel):
    """One Shadow-FT run: the model pair, data, training, graft, evaluation, baselines and output."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    pair: PairConfig = Field(default_factory=PairConfig, description="The Base / Instruct model pair.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data and its preparation.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning hyperparameters.")
    graft: GraftConfig = Field(default_factory=GraftConfig, description="How the update is grafted onto Instruct.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation suites and settings.")
    baselines: list[Baseline] = Field(
        default_factory=lambda: list[Baseline](["instruct", "direct"]),
        description="Comparisons evaluated beside Shadow-FT: instruct (the untouched Instruct model), "
        "direct (the same fine-tuning applied to Instruct) and tuned-base (Base and the tuned Base itself, "
        "without chat template; with instruct, the report adds the share of the tuned Base's gain that the "
        "graft carried).",
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig,
        description="Slots and GPUs for the heavy stages (training, evaluation) to run side by side.",
    )
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where results go.")

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _distinct_models(self) -> RunConfig:
        if self.pair.base == self.pair.instruct and self.pair.base_revision == self.pair.instruct_revision:
            raise ValueError("pair.base and pair.instruct are the same model")
        return self

    @model_validator(mode="after")
    def _auto_alpha_needs_validation(self) -> RunConfig:
        """alpha: auto is chosen on held-out data: without it the run would fail after training."""
        if self.graft.alpha == "auto":
            if not self.data.has_validation:
                raise ValueError(
                    "graft.alpha auto needs a validation split: set data.validation_ratio (e.g. 0.1) "
                    "or data.validation_sources"
                )
            if not get_objective(self.train.objective).selects_alpha:
                raise ValueError(
                    f"graft.alpha auto measures the SFT loss on the validation split, which train.objective "
                    f"{self.train.objective} does not train: use it with train.objective sft"
                )
        return self

    @model_validator(mode="after")
    def _backend_fits_a_slot(self) -> RunConfig:
        """An evaluation needing more GPUs than a stage's slot holds would fail only once it starts."""
        backend, settings = self.eval.backend, self.eval.backend_settings
        need = BACKENDS[backend].devices(settings) if settings is not None else 0
        if need > self.resources.devices_per_stage:
            raise ValueError(
                f"eval.backend {backend} with its settings (eval.{backend}) needs {need} GPUs per evaluation but "
                f"resources.devices_per_stage is {self.resources.devices_per_stage}: raise it to {need}"
            )
        return self

    # -- views for the orchestration layer -------------------------------------------------------
    # (cache keys: each stage spec in shadowft.stages owns its key, from its section's `cache_view`)

    def placeholders(self) -> list[str]:
        """The ``zoo:NAME`` placeholders this config uses (model and data sources), in order."""
        values = [self.pair.base, self.pair.instruct, *self.data.sources, *self.data.validation_sources]
        return [v for v in dict.fromkeys(values) if v.startswith(ZOO_PREFIX)]

    def resolve(self, zoo: Mapping[str, str | Path]) -> RunConfig:
        """A copy with every ``zoo:NAME`` replaced by ``zoo[NAME]`` (e.g. {'base': '/cache/tiny/base'})."""

        def sub(v: str) -> str:
            if not v.startswith(ZOO_PREFIX):
                return v
            name = v[len(ZOO_PREFIX) :]
            if name not in zoo:
                raise ShadowFTError(
                    f"unknown placeholder {v!r}",
                    hint=f"the embedded family provides: {', '.join(ZOO_PREFIX + k for k in sorted(zoo))}",
                )
            return str(zoo[name])

        data = self.model_dump()
        data["pair"]["base"] = sub(self.pair.base)
        data["pair"]["instruct"] = sub(self.pair.instruct)
        data["data"]["sources"] = [sub(s) for s in self.data.sources]
        data["data"]["validation_sources"] = [sub(s) for s in self.data.validation_sources]
        return RunConfig.model_validate(data)

    def to_yaml(self) -> str:
        """The config as YAML (every key, defaults included), loadable with `load_config`."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# -- loading -------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading `1e-4` and `-1e-4` as numbers (YAML 1.2), not as strings: a bad
    value is then echoed as the number it is (`got -0.0001`), and a good one needs no coercion."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


#: Bounds on what a YAML document may expand to: a config has a few hundred values. Aliases share one
#: node, so nested anchors (a "billion laughs" document) are small on disk but expand exponentially
#: wherever the data is walked as a tree (validation, error messages); they are counted while
#: composing, before anything is built.
MAX_YAML_VALUES = 100_000
MAX_YAML_ALIASES = 1_000
MAX_YAML_BYTES = 4 << 20


class _LimitedLoader(_Loader):
    """`_Loader` that refuses more than `MAX_YAML_ALIASES` aliases while composing."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise yaml.MarkedYAMLError(
                    problem=f"more than {MAX_YAML_ALIASES} aliases (*name)", problem_mark=self.peek_event().start_mark
                )
        return super().compose_node(parent, index)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose tree (aliases expanded) has more than `MAX_YAML_VALUES` values, or that
    contains itself (a recursive alias). Linear in the graph: each node's expanded size is memoised."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [x for kv in node.value for x in kv]
        if done:
            on_path.discard(nid)
            size[nid] = 1 + sum(size[id(c)] for c in children)
            if size[nid] > MAX_YAML_VALUES:
                raise yaml.MarkedYAMLError(
                    problem=f"aliases expand to more than {MAX_YAML_VALUES} values (an alias bomb?)",
                    problem_mark=node.start_mark,
                )
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise yaml.MarkedYAMLError(problem="an alias refers to itself", problem_mark=node.start_mark)
        on_path.add(nid)
        stack.append((node, True))
        for c in children:
            if id(c) in on_path:
                raise yaml.MarkedYAMLError(problem="an alias refers to itself", problem_mark=c.start_mark)
            if id(c) not in size:
                stack.append((c, False))


def load_yaml(text: str) -> Any:
    """Parse one YAML document with `_Loader`, refusing alias bombs, recursive aliases and nesting too
    deep for the parser. Raises `yaml.YAMLError` (with a mark where there is one)."""
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        try:
            return loader.construct_document(node)
        except (ValueError, TypeError, IndexError, AttributeError, OverflowError) as exc:
            # PyYAML's constructors fail this way on an explicit tag with a bad value (`!!float ''`)
            raise yaml.MarkedYAMLError(
                problem=f"a value cannot be read ({type(exc).__name__}: {exc})", problem_mark=node.start_mark
            ) from None
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value`` (value read as a YAML scalar or flow list) into (path, value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ShadowFTError(f"override {text!r} is not of the form key.sub=value", hint="for example: train.lr=1e-4")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ShadowFTError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


M = TypeVar("M", bound=BaseModel)


def load_config(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config (or the defaults when `path` is None), apply ``key.sub=value`` overrides,
    and validate. Every problem raises `ShadowFTError` naming the key path and the file."""
    return load_model(RunConfig, path, overrides, example="examples/toy.yaml")


def load_model(
    model: type[M],
    path: Path | str | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    what: str = "config",
    example: str,
) -> M:
    """Read a YAML file into the pydantic `model` (the run config, the comparison config, ...), apply
    ``key.sub=value`` overrides and validate. Every problem raises `ShadowFTError` naming the key path,
    the file and the override it came from; `example` is the file the hints point to."""
    where = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ShadowFTError(f"{what} file {p} does not exist", hint=f"see {example} for a starting point")
        try:
            if p.stat().st_size > MAX_YAML_BYTES:
                raise ShadowFTError(f"{p}: a {what} file is at most {MAX_YAML_BYTES >> 20} MiB")
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ShadowFTError(f"{p}: not UTF-8 text (byte {exc.start})") from None
        except OSError as exc:
            raise ShadowFTError(f"{what} file {p} cannot be read: {exc.strerror or exc}") from None
        try:
            loaded = load_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            at = f"{p} line {mark.line + 1}" if mark is not None else str(p)
            raise ShadowFTError(f"{at}: invalid YAML: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            sections = ", ".join(list(model.model_fields)[:3])
            raise ShadowFTError(f"{p}: a {what} must be a mapping of sections ({sections}, ...)")
        data = loaded
    return _with_overrides(model, data, overrides, where=where, what=what, example=example)


def apply_overrides(
    config: M, overrides: list[str] | tuple[str, ...], *, what: str = "config", example: str = "examples/toy.yaml"
) -> M:
    """`config` with ``key.sub=value`` overrides applied, exactly as the CLI's `--set` applies them to a
    file (a deployment run's `overrides` parameter), and validated again."""
    if not overrides:
        return config
    data = config.model_dump(mode="json")
    return _with_overrides(type(config), data, overrides, where="overrides", what=what, example=example)


def _with_overrides(
    model: type[M], data: dict[str, Any], overrides: list[str] | tuple[str, ...], *, where: str, what: str, example: str
) -> M:
    overridden: dict[str, str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise ShadowFTError(f"override {text!r}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = value
        overridden[".".join(keys)] = text

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(dict(err), overridden, model) for err in exc.errors()]
        head = f"invalid {what} ({where}): " if len(problems) == 1 else f"invalid {what} ({where}):\n  "
        raise ShadowFTError(
            head + "\n  ".join(problems),
            hint=f"every key and its default is listed in {example}",
        ) from None


def _describe(err: dict[str, Any], overridden: dict[str, str], root: type[BaseModel]) -> str:
    loc = [str(x) for x in err.get("loc", ())]
    key = ".".join(loc) if loc else "(top level)"
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, loc[:-1])
        alias = next((k for k in KNOWN_ALIASES.get(loc[-1], ()) if k in allowed), None)
        close = [alias] if alias else difflib.get_close_matches(loc[-1], allowed, n=1)
        msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
        if allowed:
            msg += f"; allowed: {', '.join(allowed)}"
    elif kind == "greater_than":
        msg = f"must be greater than {ctx.get('gt')}"
    elif kind == "greater_than_equal":
        msg = f"must be at least {ctx.get('ge')}"
    elif kind == "less_than":
        msg = f"must be less than {ctx.get('lt')}"
    elif kind == "less_than_equal":
        msg = f"must be at most {ctx.get('le')}"
    elif kind == "literal_error":
        msg = f"must be one of {ctx.get('expected')}"
    elif kind == "missing":
        msg = "is required"
    elif kind == "too_short":
        msg = "must not be empty"
    elif kind == "finite_number":
        msg = "must be a finite number"
    elif kind == "value_error":
        msg = str(ctx.get("error", err.get("msg", "")))
    elif kind == "list_type" and isinstance(err.get("input"), str | int | float) and loc:
        example = {"suites": "[gsm8k,arc_easy]", "sources": "[data/a.jsonl,data/b.jsonl]"}.get(loc[-1], "[a,b]")
        got = err["input"]
        msg = f"must be a list in brackets, e.g. {key}=[{got}] or {key}={example}"
    else:
        msg = err.get("msg", "invalid value")
        msg = msg[:1].lower() + msg[1:]
    if kind not in ("extra_forbidden", "missing") and "input" in err and not isinstance(err["input"], dict):
        got = repr(err["input"])
        msg += f" (got {got if len(got) <= 80 else got[:60] + f'... ({len(got)} characters)'})"
    src = _override_for(loc, overridden)
    if src:
        msg += f" [from override {src!r}]"
    return f"{key}: {msg}"


#: Keys people bring from transformers / TRL / other trainers -> ours (in the section where they are
#: unknown): `train.learning_rate` gets "did you mean 'lr'?", which difflib does not find.
KNOWN_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("lr",),
    "num_train_epochs": ("epochs",),
    "num_epochs": ("epochs",),
    "per_device_train_batch_size": ("batch_size",),
    "per_device_eval_batch_size": ("batch_size",),
    "train_batch_size": ("batch_size",),
    "gradient_accumulation_steps": ("grad_accum",),
    "lr_scheduler_type": ("scheduler",),
    "warmup_steps": ("warmup_ratio",),
    "r": ("lora_rank",),
    "lora_r": ("lora_rank",),
    "target_modules": ("lora_targets",),
    "bf16": ("precision",),
    "fp16": ("precision",),
    "torch_dtype": ("precision",),
    "dtype": ("precision",),
    "max_seq_length": ("max_length",),
    "max_seq_len": ("max_length",),
    "cutoff_len": ("max_length",),
    "seq_length": ("max_length",),
    "dataset": ("sources",),
    "datasets": ("sources",),
    "data_files": ("sources",),
    "tasks": ("suites",),
    "model_name_or_path": ("base",),
    "output_dir": ("root",),
}


def _override_for(loc: list[str], overridden: dict[str, str]) -> str | None:
    """The override that set this location (or a key inside it, or a section containing it)."""
    path = ".".join(loc)
    for key, text in overridden.items():
        if key == path or key.startswith(path + ".") or path.startswith(key + "."):
            return text
    return None


def _allowed_keys(root: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = root
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []
