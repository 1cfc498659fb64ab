"""Kahneman-Tversky optimisation with TRL's `KTOTrainer` (Shadow-KTO: KTO on Base, grafted onto Instruct).

KTO learns from unpaired feedback: each row is one completion of a prompt, labelled desirable or
undesirable. Rows are read in two formats (detected per file, from its first row):

- TRL's unpaired preference format: ``{"prompt": str | [messages], "completion": str | [one assistant
  message], "label": bool}`` (a string prompt is the user turn; an optional ``system``);
- LLaMA-Factory's KTO rows: ``{"messages": [...], "kto_tag": bool}`` (or ``conversations`` with
  ``from`` / ``value``; the tag may be named ``label``, as in LLaMA-Factory's demo set before its
  ``dataset_info.json`` maps it): the last assistant turn is the completion, the turns before it the prompt.

As for DPO, the prompt and completion are rendered to plain text with Instruct's chat template
(`shadowft.preference.render_replies`), so Base and Instruct see the same tokens; `KTOTrainer` reads
them as its standard (non-conversational) format. Rows keep the order of the files: TRL samples KTO
data sequentially (its KL estimate pairs each prompt with a neighbour's completion in the batch), so
mix desirable and undesirable rows and keep a prompt's two answers apart.

Refused before any model loads, with file and line: a row without a boolean label, a malformed row;
and data that is all desirable or all undesirable (KTO's loss weighs one kind against the other).
The reference model is the starting model: LoRA disables the adapter, full loads a frozen copy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from shadowft.errors import ShadowFTError
from shadowft.registry import SettingsModel
from shadowft.train.objectives.base import (
    Objective,
    TrainerParts,
    data_markdown,
    prepared_max_length,
    refuse_packing,
)

if TYPE_CHECKING:
    from shadowft.config import DataConfig, TrainConfig

KTO_FORMATS = ("text", "messages", "llamafactory")
FORMATS_HINT = (
    "accepted KTO formats: prompt/completion/label with strings or message lists (TRL's unpaired "
    "preference format), or messages (or conversations) + a boolean kto_tag (LLaMA-Factory's KTO rows)"
)
LABEL_HINT = "label each row true (a desirable completion) or false (an undesirable one)"
#: the label's field per format (LLaMA-Factory's rows: kto_tag, or label before dataset_info maps it)
LABEL_KEYS = {"text": ("label",), "messages": ("label",), "llamafactory": ("kto_tag", "label")}


class KTOSettings(SettingsModel):
    """train.kto: TRL's KTO loss, its strength and the weights of the two kinds of rows."""

    beta: float = Field(
        default=0.1,
        gt=0,
        description="Strength of the pull towards the reference (starting) model (TRL's and LLaMA-Factory's "
        "default 0.1; higher stays closer to the starting model).",
    )
    loss: Literal["kto", "apo_zero_unpaired"] = Field(
        default="kto",
        description="TRL's loss type: kto (the KTO paper's, with the KL reference point estimated in each batch) "
        "or apo_zero_unpaired (APO-zero, no KL term).",
    )
    desirable_weight: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="Weight of the desirable rows' losses (raise it when they are fewer than the undesirable "
        "ones; the KTO paper keeps desirable x weight / undesirable x weight in [1, 4/3]).",
    )
    undesirable_weight: float = Field(default=1.0, gt=0, le=100, description="Weight of the undesirable rows' losses.")


class KTO(Objective):
    """TRL's KTO loss (`train.kto.loss`, default kto) with strength `train.kto.beta`."""

    name = "kto"
    summary = "TRL's KTO on prompt/completion rows labelled desirable or undesirable (Shadow-KTO)"
    Settings = KTOSettings
    #: LoRA 5e-6 as in LLaMA-Factory's LoRA KTO example (examples/train_lora/llama3_lora_kto.yaml);
    #: full 5e-7, as for DPO (TRL's KTOConfig default is 1e-6)
    default_lr = {"lora": 5e-6, "full": 5e-7}
    columns = ("prompt", "completion", "label")
    token_columns = ()  # text columns: TRL tokenizes them with the tokenizer saved by the data stage
    sequences_per_sample = 2  # the completion and the batch's KL completion

    def check_train(self, spec: TrainConfig) -> None:
        if self.settings(spec).loss == "kto" and spec.batch_size < 2:
            raise ValueError(
                "train.objective kto needs train.batch_size of at least 2: TRL's KTOTrainer estimates the KL "
                "reference point from the other completions of the batch (or set train.kto.loss apo_zero_unpaired)"
            )

    def prepare_data(self, data: DataConfig, tokenizer_dir: Path, out_dir: Path) -> KTOStats:
        return prepare_kto(data, tokenizer_dir, out_dir)

    def describe_data(self, stats: dict[str, Any]) -> str:
        md = data_markdown(
            "KTO data", "rows", stats, f"prompts {stats['prompt_tokens']}, completions {stats['completion_tokens']}"
        )
        return md + f"- desirable: {stats['desirable']}, undesirable: {stats['undesirable']}\n"

    def check_dataset(self, dataset: Any, data_dir: Path) -> None:
        super().check_dataset(dataset, data_dir)
        check_both_labels(list(dataset["label"]), str(data_dir))

    def max_token_id(self, dataset: Any) -> int:
        return -1  # the texts were rendered by the Instruct tokenizer the trainer also uses

    def collator(self, tokenizer: Any, device: str) -> Any:
        return None  # KTOTrainer's own collator (with the batch's mismatched pairs for the KL term)

    def args_class(self) -> type:
        from trl import KTOConfig

        return KTOConfig

    def trainer_class(self) -> type:
        from trl import KTOTrainer

        return KTOTrainer

    def build_trainer(self, parts: TrainerParts) -> Any:
        settings = self.settings(parts.spec)
        args = self.args_class()(
            **parts.args,
            beta=settings.beta,
            loss_type=settings.loss,
            desirable_weight=settings.desirable_weight,
            undesirable_weight=settings.undesirable_weight,
            max_length=prepared_max_length(parts.data_dir),
            precompute_ref_log_probs=False,
        )
        return self.trainer_class()(
            model=parts.model,
            ref_model=None,  # LoRA: the adapter-disabled model; full: TRL loads a frozen copy
            args=args,
            train_dataset=parts.dataset,
            processing_class=parts.tokenizer,
            callbacks=parts.callbacks,
        )


# -- the data --------------------------------------------------------------------------------------


@dataclass
class KTOSourceStats:
    source: str
    format: str
    rows: int = 0
    desirable: int = 0
    undesirable: int = 0
    dropped: int = 0
    truncated: int = 0


@dataclass
class KTOStats:
    """What `prepare_kto` produced (also written to ``stats.json``)."""

    rows: int
    desirable: int
    undesirable: int
    prompt_tokens: int
    completion_tokens: int
    dropped: int
    truncated: int
    max_length: int
    overlong: str
    longest: int
    sources: list[KTOSourceStats] = field(default_factory=list)
    kind: str = "kto"

    @property
    def samples(self) -> int:
        return self.rows

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "samples": self.rows, "tokens": self.tokens}


def detect_kto_format(record: Any) -> str | None:
    """text / messages (TRL's prompt + completion) / llamafactory (a conversation + kto_tag), or None."""
    if not isinstance(record, dict):
        return None
    if "completion" in record:
        prompt = record.get("prompt")
        return "text" if isinstance(prompt, str) else "messages" if isinstance(prompt, list) else None
    if isinstance(record.get("messages"), list) or isinstance(record.get("conversations"), list):
        return "llamafactory"
    return None


def _unrecognised(record: Any) -> str:
    if isinstance(record, dict) and "chosen" in record and "rejected" in record:
        return "a preference pair (chosen / rejected): use train.objective dpo, or write one row per completion"
    return "unrecognised KTO row (" + FORMATS_HINT + ")"


def label_of(record: dict[str, Any], fmt: str) -> bool:
    """The row's boolean label; ValueError when it is missing or not a boolean (1, "true" are refused:
    a column of mixed types usually means a misread file)."""
    keys = LABEL_KEYS[fmt]
    key = next((k for k in keys if k in record), None)
    if key is None:
        raise ValueError(f"missing field {keys[0]!r} (true for a desirable completion, false for an undesirable one)")
    value = record[key]
    if not isinstance(value, bool):
        got = json.dumps(value)[:40] if isinstance(value, (str, int, float, type(None))) else type(value).__name__
        raise ValueError(f"field {key!r} must be true or false, got {got}")
    return value


def to_kto(record: Any, fmt: str) -> tuple[list[dict[str, str]], str, bool]:
    """(prompt messages, completion, label) of one row; raises ValueError naming the problem."""
    from shadowft.data import check_conversation, detect_format, to_messages
    from shadowft.preference import _prompt, _reply

    if not isinstance(record, dict):
        raise ValueError(f"a row must be a JSON object, got {type(record).__name__}")  # noqa: TRY004
    label = label_of(record, fmt)
    if fmt == "llamafactory":
        conv = detect_format(record)
        if conv not in ("messages", "sharegpt"):
            raise ValueError("field 'messages' (or 'conversations') must be a non-empty list of turns")
        msgs = to_messages(record, conv)
        check_conversation(msgs)
        prompt, completion = msgs[:-1], msgs[-1]["content"]
    else:
        prompt = _prompt(record, fmt)
        completion = _reply(record.get("completion"), "completion", fmt)
    roles = [m["role"] for m in prompt if m["role"] != "system"]
    if not roles or roles[-1] != "user":
        raise ValueError("the prompt must end with a user turn")
    check_conversation([*prompt, {"role": "assistant", "content": completion}])
    return prompt, completion, label


def check_both_labels(labels: list[bool], where: str) -> None:
    """KTO weighs desirable against undesirable completions: data with only one kind is refused."""
    desirable = sum(labels)
    if desirable and desirable < len(labels):
        return
    kind, other = ("desirable", "undesirable (label false)") if desirable else ("undesirable", "desirable (label true)")
    raise ShadowFTError(
        f"the KTO data in {where} has only {kind} completions ({len(labels)} rows): KTO's loss pushes desirable "
        "completions above the reference point and undesirable ones below it, and needs both",
        hint=f"add {other} rows; for desirable-only data use train.objective sft",
    )


def prepare_kto(spec: DataConfig, tokenizer_dir: Path, out_dir: Path) -> KTOStats:
    """Read KTO rows from `spec.sources`, render them with the chat template of `tokenizer_dir` and
    write the dataset (prompt, completion, label), tokenizer and ``stats.json`` to `out_dir`
    (published by an atomic rename). Malformed or unlabelled rows (with file and line), data of one
    label only, and an empty result raise `ShadowFTError` before anything is written."""
    from datasets import Features, Value

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
    from shadowft.files import refuse_nonempty
    from shadowft.formats import check_text_objective_row
    from shadowft.preference import count_tokens, render_replies

    out_dir = Path(out_dir)
    refuse_packing(spec, "kto", "KTO batches each prompt with another row's completion for its KL term")
    refuse_nonempty(out_dir)
    tok = load_tokenizer(tokenizer_dir)
    problems = _Problems(what="KTO data", formats_hint=FORMATS_HINT + "; " + LABEL_HINT)
    rows: list[tuple[int, str, list[dict[str, str]], str, bool]] = []
    per_source: list[KTOSourceStats] = []
    max_bytes = record_limit(spec)
    for si, rec, fmt in known_records(
        spec,
        problems,
        per_source,
        lambda name: KTOSourceStats(source=name, format="auto"),
        detect_kto_format,
        _unrecognised,
        taken=lambda: len(rows),
        check=check_text_objective_row,  # images, videos, audio (SFT and DPO train a VLM pair's images)
    ):
        try:
            prompt, completion, label = to_kto(rec.data, fmt)
            with_system_prompt(prompt, spec.system_prompt)
            check_size([*prompt, {"role": "assistant", "content": completion}], max_bytes)
        except ValueError as exc:
            problems.add_error(rec.where, exc)
            continue
        rows.append((si, rec.where, prompt, completion, label))
    problems.raise_if_any()
    sources = ", ".join(spec.sources)
    if not rows:
        raise ShadowFTError(
            f"the KTO data is empty (sources: {sources})",
            hint="add prompt/completion/label rows to the data files or check data.sources",
        )
    check_both_labels([r[4] for r in rows], sources)  # before the rendering and tokenizing

    columns: dict[str, list[Any]] = {"prompt": [], "completion": [], "label": []}
    counts = {"prompt": 0, "completion": 0}
    longest = 0
    for si, where, prompt, completion, label in rows:
        st = per_source[si]
        prompt_text, (completion_text,) = rendered(where, lambda p=prompt, c=completion: render_replies(tok, p, (c,)))
        n_prompt = count_tokens(tok, prompt_text, spec.max_length)
        n_completion = count_tokens(tok, completion_text, spec.max_length)
        length = n_prompt + n_completion
        if length > spec.max_length:
            if spec.overlong == "drop" or n_prompt >= spec.max_length:
                st.dropped += 1  # dropped, or the prompt alone fills the cutoff (TRL would drop it)
                continue
            st.truncated += 1  # KTOTrainer truncates at max_length (from the right)
        longest = max(longest, length)
        if label:
            st.desirable += 1
        else:
            st.undesirable += 1
        columns["prompt"].append(prompt_text)
        columns["completion"].append(completion_text)
        columns["label"].append(label)
        counts["prompt"] += n_prompt
        counts["completion"] += n_completion
    dropped = sum(s.dropped for s in per_source)
    if not columns["prompt"]:
        raise ShadowFTError(
            f"all {dropped} KTO rows are longer than data.max_length={spec.max_length} tokens",
            hint="raise data.max_length, or set data.overlong=truncate",
        )
    if dropped:  # the rows left after the cutoff must still hold both kinds
        check_both_labels(columns["label"], f"{sources} (after dropping {dropped} rows over data.max_length)")
    stats = KTOStats(
        rows=len(columns["prompt"]),
        desirable=sum(columns["label"]),
        undesirable=len(columns["label"]) - sum(columns["label"]),
        prompt_tokens=counts["prompt"],
        completion_tokens=counts["completion"],
        dropped=dropped,
        truncated=sum(s.truncated for s in per_source),
        max_length=spec.max_length,
        overlong=spec.overlong,
        longest=longest,
        sources=per_source,
    )
    features = Features({"prompt": Value("string"), "completion": Value("string"), "label": Value("bool")})
    publish_prepared(out_dir, columns, features, tok, stats)
    return stats
