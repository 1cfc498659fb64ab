"""Reinforcement learning with verifiable rewards: TRL's `GRPOTrainer` (Shadow-RL: GRPO on Base,
grafted onto Instruct).

GRPO samples `num_generations` completions of each prompt from the model being trained, scores them
with reward functions, and raises the likelihood of the completions that score above their group's
mean. Rows are prompts plus the reference columns the rewards read:

- ``{"messages": [... ending with a user turn], "answer": "42"}`` (a conversation to answer), or
- ``{"prompt": str | [messages], "answer": "42"}`` (a string prompt is the user turn; an optional
  ``system``).

Every other field of a row is a reference column, passed to the reward functions as text (a
non-text value JSON-encoded). The prompt is rendered to text with Instruct's chat template (with
the generation prompt), as DPO and KTO render theirs, so Base and Instruct see the same tokens and
generate the same way. The rewards are `train.grpo.rewards` (`shadowft.train.rewards`: exact
match, regex, numeric, code in the sandbox) and `train.grpo.reward_module`, a user's function.

Refused with file and line: a malformed row, a prompt that does not end with a user turn (at the
data stage); a row without the column a chosen reward reads (before the model loads). Refused
before any stage: `use_vllm` without a GPU or vLLM, a code reward without the opt-in, a reward
module that cannot be found. The reference model (`beta` > 0) is the starting model: LoRA keeps a
frozen copy of the initial adapter (TRL's "ref" adapter, dropped before the adapter is saved), full
loads a frozen copy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from shadowft.errors import ShadowFTError
from shadowft.registry import SettingsModel
from shadowft.train.objectives.base import Objective, TrainerParts, data_markdown, refuse_packing
from shadowft.train.rewards import REWARDS, ExactMatchSettings, RewardEntry

if TYPE_CHECKING:
    from shadowft.config import DataConfig, TrainConfig

FORMATS_HINT = (
    "accepted GRPO rows: messages (a conversation ending with a user turn) or prompt (text or a message "
    "list), plus the reference columns the rewards read (e.g. answer)"
)
#: the column that records where a row came from ("file line N"), for the reward-column check
WHERE = "_where"
#: fields that make up the prompt (every other field of a row is a reference column)
PROMPT_FIELDS = ("messages", "prompt", "system")


class GRPOSettings(SettingsModel):
    """train.grpo: sampling (generations per prompt, their length, temperature), the KL strength and the rewards."""

    num_generations: int = Field(
        default=4,
        ge=2,
        le=256,
        description="Completions sampled per prompt (the group whose mean reward is the baseline; TRL's default "
        "8). train.batch_size x train.grad_accum must be a multiple of it.",
    )
    max_completion_length: int = Field(
        default=64, ge=1, le=65536, description="Most tokens generated per completion (TRL's default 512)."
    )
    temperature: float = Field(default=1.0, gt=0, le=10, description="Sampling temperature of the generations.")
    beta: float = Field(
        default=0.04,
        ge=0,
        description="Strength of the KL penalty towards the reference (starting) model (the GRPO paper's 0.04; "
        "0 = no reference model, TRL's default).",
    )
    rewards: list[RewardEntry] = Field(
        default_factory=lambda: [ExactMatchSettings()],  # type: ignore[arg-type]
        description="Built-in verifiable rewards, each {name: exact_match | regex | numeric | code, weight, ...its "
        "settings}; their weighted sum is the reward.",
    )
    reward_module: str | None = Field(
        default=None,
        description="A reward function of your own, 'package.module:function' or 'path/to/file.py:function', "
        "called as TRL calls reward functions (completions=[...], one list per data column) and added with "
        "weight 1; its file's content is part of the train stage's key.",
    )
    use_vllm: bool = Field(
        default=False, description="Generate with vLLM colocated on the training GPU (needs a GPU and vllm)."
    )

    @field_validator("reward_module")
    @classmethod
    def _module_ref(cls, v: str | None) -> str | None:
        if v is not None:
            module, sep, func = v.strip().rpartition(":")
            if not sep or not module or not func.isidentifier():
                raise ValueError("must be 'package.module:function' or 'path/to/file.py:function'")
            return v.strip()
        return v


class GRPO(Objective):
    """TRL's GRPO with verifiable rewards (`train.grpo.rewards`) and an optional reward module."""

    name = "grpo"
    summary = "reinforcement learning with verifiable rewards: TRL's GRPO on prompts with reference answers (Shadow-RL)"
    Settings = GRPOSettings
    #: LoRA 1e-5 (TRL's PEFT GRPO examples), full 1e-6 (TRL's GRPOConfig default)
    default_lr = {"lora": 1e-5, "full": 1e-6}
    columns = ("prompt",)
    token_columns = ()  # the prompt is text: TRL tokenizes it with the tokenizer saved by the data stage

    def check_train(self, spec: TrainConfig) -> None:
        settings = self.settings(spec)
        if not settings.rewards and settings.reward_module is None:
            raise ValueError("train.grpo needs a reward: list train.grpo.rewards or set train.grpo.reward_module")
        per_step = spec.batch_size * spec.grad_accum
        if per_step % settings.num_generations:
            raise ValueError(
                f"train.batch_size x train.grad_accum ({per_step}) must be a multiple of train.grpo.num_generations "
                f"({settings.num_generations}): TRL generates whole groups of completions per prompt"
            )

    def preflight(self, spec: TrainConfig) -> None:
        from shadowft.train.rewards import require_code_opt_in, reward_module_file

        settings = self.settings(spec)
        require_code_opt_in([e.name for e in settings.rewards if REWARDS[e.name].executes_code])
        if settings.reward_module is not None:
            reward_module_file(settings.reward_module)
        if settings.use_vllm:
            import importlib.util

            import torch

            if not torch.cuda.is_available():
                raise ShadowFTError(
                    "train.grpo.use_vllm generates with vLLM, which needs a GPU, and this machine has none",
                    hint="set train.grpo.use_vllm=false (TRL generates with transformers) or run on a GPU machine",
                )
            if importlib.util.find_spec("vllm") is None:
                raise ShadowFTError(
                    "train.grpo.use_vllm needs the vllm package, which is not installed",
                    hint='pip install "shadowft[vllm]", or set train.grpo.use_vllm=false',
                )

    def generated_tokens(self, spec: TrainConfig) -> int:
        return self.settings(spec).max_completion_length  # each step trains on prompt + completion

    def cache_key(self, spec: TrainConfig) -> dict[str, Any]:
        from shadowft.train.rewards import reward_module_hash

        ref = self.settings(spec).reward_module
        return {"reward_module_sha256": reward_module_hash(ref)} if ref is not None else {}

    # -- data --------------------------------------------------------------------------------------

    def prepare_data(self, data: DataConfig, tokenizer_dir: Path, out_dir: Path) -> GRPOStats:
        return prepare_grpo(data, tokenizer_dir, out_dir)

    def describe_data(self, stats: dict[str, Any]) -> str:
        md = data_markdown("GRPO prompts", "prompts", stats, f"prompts {stats['prompt_tokens']}")
        return md + f"- reference columns: {', '.join(stats.get('columns', [])) or 'none'}\n"

    def check_train_data(self, dataset: Any, data_dir: Path, spec: TrainConfig) -> None:
        check_reward_columns(dataset, self.settings(spec), str(data_dir))

    def max_token_id(self, dataset: Any) -> int:
        return -1  # the prompts were rendered by the Instruct tokenizer the trainer also uses

    def collator(self, tokenizer: Any, device: str) -> Any:
        return None  # GRPOTrainer batches prompts itself

    def args_class(self) -> type:
        from trl import GRPOConfig

        return GRPOConfig

    def trainer_class(self) -> type:
        from trl import GRPOTrainer

        return GRPOTrainer

    def build_trainer(self, parts: TrainerParts) -> Any:
        from shadowft.train.rewards import build_rewards, load_reward_function

        settings = self.settings(parts.spec)
        funcs, weights = build_rewards(settings.rewards)
        if settings.reward_module is not None:
            funcs.append(load_reward_function(settings.reward_module))
            weights.append(1.0)
        args = self.args_class()(
            **parts.args,
            num_generations=settings.num_generations,
            max_completion_length=settings.max_completion_length,
            temperature=settings.temperature,
            beta=settings.beta,
            reward_weights=weights,
            use_vllm=settings.use_vllm,
            vllm_mode="colocate",
            log_completions=False,
        )
        parts.tokenizer.padding_side = "left"  # generation continues the prompt at the right edge
        trainer = self.trainer_class()(
            model=parts.model,
            reward_funcs=funcs,
            args=args,
            train_dataset=parts.dataset,
            processing_class=parts.tokenizer,
            callbacks=[*parts.callbacks, _drop_reference_adapter()],
        )
        return trainer


def _drop_reference_adapter() -> Any:
    """With LoRA and beta > 0, TRL keeps the starting adapter as a frozen "ref" adapter beside the
    trained one; it is dropped when training ends so the published adapter is the trained one alone."""
    from transformers import TrainerCallback

    class _Drop(TrainerCallback):
        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            peft_config = getattr(model, "peft_config", None)
            if isinstance(peft_config, dict) and "ref" in peft_config and len(peft_config) > 1:
                model.delete_adapter("ref")

    return _Drop()


def check_reward_columns(dataset: Any, settings: GRPOSettings, where: str) -> None:
    """Every row holds the columns the chosen rewards read (rows without one: with file and line)."""
    from shadowft.data import MAX_REPORTED

    needs: dict[str, list[str]] = {}
    for entry in settings.rewards:
        for column in REWARDS[entry.name].columns(entry):
            needs.setdefault(column, []).append(entry.name)
    have = set(dataset.column_names)
    for column, names in needs.items():
        readers = ", ".join(dict.fromkeys(names))
        hint = f"add {column!r} to every row, or point the reward at another column (train.grpo.rewards: column)"
        if column not in have:
            found = ", ".join(c for c in dataset.column_names if c not in ("prompt", WHERE)) or "none"
            raise ShadowFTError(
                f"the GRPO data in {where} has no column {column!r}, which reward {readers} reads "
                f"(its reference columns: {found})",
                hint=hint,
            )
        values, rows = dataset[column], dataset[WHERE] if WHERE in have else None
        missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
        if missing:
            shown = [f"{rows[i] if rows else f'row {i + 1}'}: no {column!r}" for i in missing[:MAX_REPORTED]]
            more = f"\n  ... and {len(missing) - len(shown)} more" if len(missing) > len(shown) else ""
            raise ShadowFTError(
                f"{len(missing)} GRPO row(s) lack the column {column!r} that reward {readers} reads:\n  "
                + "\n  ".join(shown)
                + more,
                hint=hint,
            )


# -- the data --------------------------------------------------------------------------------------


@dataclass
class GRPOSourceStats:
    source: str
    format: str
    rows: int = 0
    prompts: int = 0
    dropped: int = 0


@dataclass
class GRPOStats:
    """What `prepare_grpo` produced (also written to ``stats.json``)."""

    prompts: int
    prompt_tokens: int
    dropped: int
    max_length: int
    longest: int
    columns: list[str]
    sources: list[GRPOSourceStats] = field(default_factory=list)
    truncated: int = 0  # a prompt is never cut: one over data.max_length is dropped
    kind: str = "grpo"

    @property
    def samples(self) -> int:
        return self.prompts

    @property
    def tokens(self) -> int:
        return self.prompt_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "samples": self.prompts, "tokens": self.tokens}


def detect_grpo_format(record: Any) -> str | None:
    """messages (a conversation to answer) / prompt (TRL's prompt column), or None."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("messages"), list):
        return "messages"
    if isinstance(record.get("prompt"), (str, list)):
        return "prompt"
    return None


def to_grpo(record: Any, fmt: str) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """(prompt messages, reference columns as text) of one row; raises ValueError naming the problem."""
    from shadowft.data import check_conversation, parse_turns
    from shadowft.preference import _prompt

    if not isinstance(record, dict):
        raise ValueError(f"a row must be a JSON object, got {type(record).__name__}")  # noqa: TRY004
    if fmt == "messages":
        turns = record.get("messages")
        if not isinstance(turns, list) or not turns:
            raise ValueError("field 'messages' must be a non-empty list of messages")
        prompt = parse_turns(turns, "messages", "messages")
        system = record.get("system")
        if isinstance(system, str) and system.strip() and prompt[0]["role"] != "system":
            prompt.insert(0, {"role": "system", "content": system})
    else:
        prompt = _prompt(record, "text" if isinstance(record.get("prompt"), str) else "messages")
    roles = [m["role"] for m in prompt if m["role"] != "system"]
    if not roles or roles[-1] != "user":
        raise ValueError("the prompt must end with a user turn (GRPO generates the reply)")
    check_conversation([*prompt, {"role": "assistant", "content": "x"}])
    refs = {
        k: (v if isinstance(v, str) or v is None else json.dumps(v))
        for k, v in record.items()
        if k not in PROMPT_FIELDS
    }
    if WHERE in refs:
        raise ValueError(f"field {WHERE!r} is reserved (shadowft records each row's file and line in it)")
    return prompt, refs


def prepare_grpo(spec: DataConfig, tokenizer_dir: Path, out_dir: Path) -> GRPOStats:
    """Read GRPO rows from `spec.sources`, render the prompts with the chat template of
    `tokenizer_dir` and write the dataset (prompt, the reference columns, where each row came from),
    tokenizer and ``stats.json`` to `out_dir` (published by an atomic rename). Malformed rows (with
    file and line) and an empty result raise `ShadowFTError` before anything is written."""

    from shadowft.data import (
        _Problems,
        check_size,
        known_records,
        load_tokenizer,
        publish_prepared,
        record_limit,
        rendered,
        with_system_prompt,
    )
    from shadowft.data import _render as render
    from shadowft.files import refuse_nonempty
    from shadowft.formats import check_text_objective_row
    from shadowft.preference import count_tokens

    out_dir = Path(out_dir)
    refuse_packing(spec, "grpo", "GRPO trains on the completions it generates")
    refuse_nonempty(out_dir)
    tok = load_tokenizer(tokenizer_dir)
    problems = _Problems(what="GRPO data", formats_hint=FORMATS_HINT)
    rows: list[tuple[int, str, list[dict[str, Any]], dict[str, str | None]]] = []
    per_source: list[GRPOSourceStats] = []
    max_bytes = record_limit(spec)
    for si, rec, fmt in known_records(
        spec,
        problems,
        per_source,
        lambda name: GRPOSourceStats(source=name, format="auto"),
        detect_grpo_format,
        lambda _: "unrecognised GRPO row (" + FORMATS_HINT + ")",
        taken=lambda: len(rows),
        check=check_text_objective_row,  # images, videos, audio (SFT and DPO train a VLM pair's images)
    ):
        try:
            prompt, refs = to_grpo(rec.data, fmt)
            with_system_prompt(prompt, spec.system_prompt)
            check_size(prompt, max_bytes)
        except ValueError as exc:
            problems.add_error(rec.where, exc)
            continue
        rows.append((si, rec.where, prompt, refs))
    problems.raise_if_any()
    if not rows:
        raise ShadowFTError(
            f"the GRPO data is empty (sources: {', '.join(spec.sources)})",
            hint="add prompt rows (with the reference columns the rewards read) or check data.sources",
        )

    names = list(dict.fromkeys(k for _, _, _, refs in rows for k in refs))
    columns: dict[str, list[Any]] = {"prompt": [], **{k: [] for k in names}, WHERE: []}
    prompt_tokens = longest = 0
    for si, where, prompt, refs in rows:
        text = rendered(where, lambda p=prompt: render(tok, p, add_generation_prompt=True))
        n = count_tokens(tok, text, spec.max_length)
        if n > spec.max_length:
            per_source[si].dropped += 1  # cutting a prompt would cut its question
            continue
        per_source[si].prompts += 1
        prompt_tokens += n
        longest = max(longest, n)
        columns["prompt"].append(text)
        for k in names:
            columns[k].append(refs.get(k))
        columns[WHERE].append(where)
    dropped = sum(s.dropped for s in per_source)
    if not columns["prompt"]:
        raise ShadowFTError(
            f"all {dropped} GRPO prompts are longer than data.max_length={spec.max_length} tokens",
            hint="raise data.max_length",
        )
    stats = GRPOStats(
        prompts=len(columns["prompt"]),
        prompt_tokens=prompt_tokens,
        dropped=dropped,
        max_length=spec.max_length,
        longest=longest,
        columns=names,
        sources=per_source,
    )
    from datasets import Features, Value

    features = Features({k: Value("string") for k in columns})
    publish_prepared(out_dir, columns, features, tok, stats)
    return stats
