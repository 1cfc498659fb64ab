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
    field_validator,
    model_validator,
)

from shadowft.errors import ShadowFTError

ZOO_PREFIX = "zoo:"

#: The paper's LoRA targets: every linear layer except lm_head (Llama/Qwen/Mistral/Gemma naming).
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_LR = {"lora": 2e-4, "full": 1e-5}

Method = Literal["lora", "full"]
Objective = Literal["sft"]
EvalBackendName = Literal["hf", "vllm"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Scheduler = Literal[
    "cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr", "polynomial", "inverse_sqrt"
]
DataFormat = Literal["auto", "messages", "sharegpt", "alpaca"]
Baseline = Literal["instruct", "direct"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False)


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
        "'zoo:train' is the embedded toy data.",
    )
    format: DataFormat = Field(
        default="auto",
        description="Record format: messages (role/content), sharegpt (from/value), alpaca "
        "(instruction/input/output), or auto (detected per file).",
    )
    max_length: int = Field(
        default=4096, ge=8, description="Cutoff length in tokens (prompt + answer, after the chat template)."
    )
    max_samples: int | None = Field(
        default=2000, ge=1, description="Use at most this many conversations (in source order); empty = all."
    )
    split: str = Field(default="train", description="Split to read from a `datasets` name (ignored for local files).")
    overlong: Literal["truncate", "drop"] = Field(
        default="truncate", description="What to do with samples longer than max_length: truncate them or drop them."
    )
    system_prompt: str | None = Field(
        default=None, description="System message added to conversations that have none; empty = none added."
    )

    @field_validator("sources")
    @classmethod
    def _sources_not_blank(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise ValueError("a source is empty")
        return [s.strip() for s in v]


class TrainConfig(_Section):
    """Fine-tuning of the Base model (and of the Instruct model for the `direct` baseline)."""

    objective: Objective = Field(
        default="sft",
        description="The training loss: sft (next-token cross-entropy on the assistant replies).",
    )
    method: Method = Field(default="lora", description="lora (train a low-rank adapter) or full (all weights).")
    lr: float | None = Field(
        default=None, gt=0, description="Peak learning rate; empty = method default (LoRA 2e-4, full 1e-5)."
    )
    epochs: float = Field(default=1.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs); empty = by epochs."
    )
    batch_size: int = Field(default=4, ge=1, description="Sequences per device per forward pass.")
    grad_accum: int = Field(
        default=8,
        ge=1,
        description="Gradient accumulation steps; global batch = batch_size x grad_accum x devices (paper: 32).",
    )
    scheduler: Scheduler = Field(default="cosine", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="Fraction of steps with linear warmup.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0, description="Gradient clipping norm (0 = no clipping).")
    lora_rank: int = Field(default=8, ge=1, description="LoRA rank r.")
    lora_alpha: float | None = Field(
        default=None, gt=0, description="LoRA scaling alpha (update = alpha/r * B A); empty = 2 x rank."
    )
    lora_dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    lora_targets: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        min_length=1,
        description="Module names that get adapters; default all linear layers except lm_head. "
        "['all-linear'] lets PEFT find them for other architectures.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass (less memory, ~30% slower)."
    )
    seed: int = Field(default=42, description="Seed for initialisation, data order and dropout.")
    precision: Precision = Field(
        default="auto", description="auto = bf16 on a GPU that supports it, else fp32; or fp32 / bf16 / fp16."
    )
    full_save_dtype: Literal["fp32", "model"] = Field(
        default="fp32",
        description="Dtype of a fully fine-tuned model on disk: fp32 keeps small updates exact for the delta "
        "(recommended), model = the checkpoint's own dtype.",
    )
    save_steps: int = Field(default=25, ge=1, description="Write a resumable checkpoint every this many steps.")
    save_total_limit: int = Field(default=2, ge=1, description="Keep at most this many checkpoints.")
    logging_steps: int = Field(default=1, ge=1, description="Record loss and learning rate every this many steps.")

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
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def effective_lora_alpha(self) -> float:
        """The LoRA alpha used: `lora_alpha`, or 2 x rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank


class GraftConfig(_Section):
    """Grafting the Base update onto Instruct: W_new = W_instruct + alpha * (W_base_tuned - W_base)."""

    alpha: float = Field(default=1.0, gt=0, le=10, description="Scale of the grafted update (paper: 1.0).")
    scope: str = Field(
        default="projections",
        description="Which tensors get the update: projections (q/k/v/o/gate/up/down proj, as published), "
        "all, or a regular expression matched against tensor names.",
    )

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


class VLLMConfig(_Section):
    """lm-eval's `vllm` model arguments (passed as they are; see lm-eval's VLLM class)."""

    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one model replica is split over.")
    data_parallel_size: int = Field(default=1, ge=1, description="Model replicas, each on its own GPUs.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Fraction of each GPU's memory vLLM may take."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context length vLLM allocates for; empty = the model's own."
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="Weights dtype in vLLM; auto = as stored."
    )

    @property
    def devices(self) -> int:
        """GPUs one evaluation with these settings occupies."""
        return self.tensor_parallel_size * self.data_parallel_size


class EvalConfig(_Section):
    """Evaluation with lm-eval: suites are groups of tasks (coding, math, reasoning)."""

    suites: list[str] = Field(
        default_factory=lambda: ["toy-math", "toy-coding", "toy-reasoning"],
        min_length=1,
        description="Suites (or lm-eval task names) to run on every model.",
    )
    limit: int | None = Field(default=None, ge=1, description="At most this many examples per task; empty = all.")
    batch_size: int = Field(default=8, ge=1, description="Evaluation batch size.")
    apply_chat_template: bool | None = Field(
        default=None,
        description="Wrap prompts in the model's chat template; empty = yes for Instruct and grafted models "
        "(as in the paper).",
    )
    backend: EvalBackendName = Field(
        default="hf",
        description="How the model runs under lm-eval: hf (transformers, one device) or vllm (lm-eval's vLLM "
        "model: needs the `vllm` extra and a GPU).",
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vLLM engine settings (used with backend: vllm).")
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
    request_cache: bool = Field(
        default=True,
        description="Keep each answered request in an SQLite cache in the stage's work dir, so a killed "
        "evaluation re-run answers the finished requests from it (lm-eval's use_cache).",
    )


class ResourcesConfig(_Section):
    """How many heavy stages (training, evaluation) run at once, and on which GPUs.

    Each running heavy stage holds a slot; with more than one slot, or on GPUs, it runs in its own
    process that sees only its devices (CUDA_VISIBLE_DEVICES). Stages that depend on each other
    still wait for each other."""

    slots: int | None = Field(
        default=None,
        ge=1,
        description="Heavy stages that may run at once; empty = visible GPUs // devices_per_stage (1 on CPU).",
    )
    devices: list[int] | None = Field(
        default=None, description="GPU indices the stages may use; empty = every visible GPU."
    )
    devices_per_stage: int = Field(
        default=1,
        ge=1,
        description="GPUs each heavy stage gets (a multi-process training or a tensor-parallel vLLM "
        "evaluation needs as many as it has processes).",
    )

    @field_validator("devices")
    @classmethod
    def _unique_devices(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if any(d < 0 for d in v):
                raise ValueError("GPU indices are 0 or more")
            if len(set(v)) != len(v):
                raise ValueError("a GPU is listed twice")
        return v


class OutputConfig(_Section):
    """Where the run writes its artifacts and reports."""

    root: str = Field(default="./runs", description="Directory for runs, reports and the artifact store.")
    name: str | None = Field(default=None, description="Run name used in reports; empty = generated.")


#: The stages of a run, in order; `RunConfig.stage_view` knows the config each one depends on.
#: (The `direct` baseline is the train stage applied to Instruct, not a stage of its own.)
STAGES = ("pair", "data", "train", "delta", "graft", "eval", "report")

# Fields that change how a stage runs but not what it produces (left out of cache keys).
_NOT_IN_KEY = {
    "train": {"save_steps", "save_total_limit"},
    "pair": {"force"},
    "eval": {"batch_size", "request_cache"},
}
#: TrainConfig fields that only one training method reads (the others' are left out of its key).
METHOD_FIELDS: dict[str, set[str]] = {
    "lora": {"lora_rank", "lora_alpha", "lora_dropout", "lora_targets"},
    "full": {"full_save_dtype"},
}


class RunConfig(BaseModel):
    """One Shadow-FT run: the model pair, data, training, graft, evaluation, baselines and output."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    pair: PairConfig = Field(default_factory=PairConfig, description="The Base / Instruct model pair.")
    data: DataConfig = Field(default_factory=DataConfig, description="Training data and its preparation.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Fine-tuning hyperparameters.")
    graft: GraftConfig = Field(default_factory=GraftConfig, description="How the update is grafted onto Instruct.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation suites and settings.")
    baselines: list[Baseline] = Field(
        default_factory=lambda: list[Baseline](["instruct", "direct"]),
        description="Comparisons evaluated beside Shadow-FT: instruct (the untouched Instruct model) and "
        "direct (the same fine-tuning applied to Instruct).",
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
    def _vllm_fits_a_slot(self) -> RunConfig:
        need = self.eval.vllm.devices
        if self.eval.backend == "vllm" and need > self.resources.devices_per_stage:
            raise ValueError(
                f"eval.vllm needs {need} GPUs per evaluation (tensor_parallel_size x data_parallel_size) but "
                f"resources.devices_per_stage is {self.resources.devices_per_stage}: raise it to {need}"
            )
        return self

    # -- views for the orchestration layer -------------------------------------------------------

    def stage_view(self, stage: str) -> dict[str, Any]:
        """The part of the config that affects `stage`'s output, as plain JSON data (for cache keys).

        Inputs (model dirs, data files, upstream artifacts) are not included: the caller adds their
        fingerprints. Method defaults are resolved (``lr: null`` and ``lr: 2e-4`` give the same view) and
        settings that do not change the output (checkpoint cadence, `force`, eval batch size) are left out.

        - pair: the pair section (model ids, revisions, threshold)
        - data: the data section (+ the Instruct tokenizer, an input)
        - train: the train section, objective included (+ prepared data and the model dir, inputs);
          the `direct` baseline is this stage on the Instruct model
        - delta: nothing of its own (base and tuned base are inputs)
        - graft: the graft section (+ Instruct and the delta or adapter, inputs)
        - eval: the eval section, the vllm settings only with backend vllm (+ the model dir, an input)
        - report: eval suites and baselines
        """
        if stage == "pair":
            return _dump(self.pair, exclude=_NOT_IN_KEY["pair"])
        if stage == "data":
            return _dump(self.data)
        if stage == "train":
            other_methods = set().union(*(f for m, f in METHOD_FIELDS.items() if m != self.train.method))
            view = _dump(self.train, exclude=_NOT_IN_KEY["train"] | other_methods)
            view["lr"] = self.train.effective_lr
            if self.train.method == "lora":
                view["lora_alpha"] = self.train.effective_lora_alpha
            return view
        if stage == "delta":
            return {}
        if stage == "graft":
            return _dump(self.graft)
        if stage == "eval":
            view = _dump(self.eval, exclude=_NOT_IN_KEY["eval"])
            if self.eval.backend != "vllm":  # the engine settings count only for the engine that reads them
                view.pop("vllm")
            return view
        if stage == "report":
            return {"suites": list(self.eval.suites), "baselines": list(self.baselines)}
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")

    def placeholders(self) -> list[str]:
        """The ``zoo:NAME`` placeholders this config uses (model and data sources), in order."""
        values = [self.pair.base, self.pair.instruct, *self.data.sources]
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
        return RunConfig.model_validate(data)

    def to_yaml(self) -> str:
        """The config as YAML (every key, defaults included), loadable with `load_config`."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _dump(section: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    return section.model_dump(mode="json", exclude=exclude or set())


# -- loading -------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value`` (value read as a YAML scalar or flow list) into (path, value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ShadowFTError(f"override {text!r} is not of the form key.sub=value", hint="for example: train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
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
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
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
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
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
    elif kind == "value_error":
        msg = str(ctx.get("error", err.get("msg", "")))
    else:
        msg = err.get("msg", "invalid value")
        msg = msg[:1].lower() + msg[1:]
    if kind not in ("extra_forbidden", "missing") and "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    src = _override_for(loc, overridden)
    if src:
        msg += f" [from override {src!r}]"
    return f"{key}: {msg}"


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
