"""Preference data for DPO: read prompt / chosen / rejected rows, render them with the Instruct chat template.

Three row formats are detected per file (from the first row that matches one), as for SFT data:

- ``text``: ``{"prompt": str, "chosen": str, "rejected": str}`` (the prompt is the user turn);
- ``messages``: TRL's conversational format, ``{"prompt": [messages], "chosen": [messages],
  "rejected": [messages]}`` where chosen / rejected hold the assistant reply;
- ``sharegpt``: LLaMA-Factory's ranking rows, ``{"conversations": [{"from", "value"}, ...],
  "chosen": {"from": "gpt", "value": ...}, "rejected": {...}}`` with an optional ``system``.

Shadow-DPO trains Base with Instruct's chat template, so the prompt and both replies are rendered
here to plain text with that template (``prompt`` ends with the generation prompt; ``chosen`` and
``rejected`` are the rest of the conversation up to the end-of-turn token) and TRL's `DPOTrainer`
reads them as its standard (non-conversational) format: Base and Instruct see the same tokens.

Layout of a prepared directory (same as SFT's, with other columns)::

    dataset/      `datasets.Dataset.save_to_disk` with columns prompt, chosen, rejected (text)
    tokenizer/    the tokenizer (and chat template) the texts were rendered with
    stats.json    counts: pairs, tokens, dropped, truncated, per source; "kind": "preference"
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadowft.config import DataConfig
from shadowft.data import (
    CUT_CHARS_PER_TOKEN,
    SHAREGPT_ROLES,
    _brief,
    _check_text,
    _Problems,
    _render,
    check_conversation,
    check_size,
    check_tool_support,
    known_records,
    load_tokenizer,
    parse_turns,
    publish_prepared,
    record_limit,
    rendered,
    with_system_prompt,
)
from shadowft.errors import ShadowFTError
from shadowft.files import refuse_nonempty
from shadowft.formats import check_preference_row, tool_definitions

PREFERENCE_FORMATS = ("text", "messages", "sharegpt")
FORMATS_HINT = (
    "accepted preference formats: prompt/chosen/rejected as strings, prompt/chosen/rejected as message "
    "lists (TRL's conversational format), or conversations + chosen + rejected (LLaMA-Factory's sharegpt "
    "ranking rows)"
)


@dataclass
class PreferenceSourceStats:
    source: str
    format: str
    rows: int = 0
    pairs: int = 0
    dropped: int = 0
    truncated: int = 0


@dataclass
class PreferenceStats:
    """What `prepare_preferences` produced (also written to ``stats.json``)."""

    pairs: int
    prompt_tokens: int
    chosen_tokens: int
    rejected_tokens: int
    dropped: int
    truncated: int
    max_length: int
    overlong: str
    longest: int
    sources: list[PreferenceSourceStats] = field(default_factory=list)
    kind: str = "preference"

    @property
    def samples(self) -> int:
        return self.pairs

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.chosen_tokens + self.rejected_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "samples": self.pairs, "tokens": self.tokens}


# -- formats -------------------------------------------------------------------------------------


def detect_preference_format(record: Any) -> str | None:
    """text / messages / sharegpt, from the keys of one row (None when it matches none)."""
    if not isinstance(record, dict) or "chosen" not in record or "rejected" not in record:
        return None
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        return "text"
    if isinstance(prompt, list):
        return "messages"
    return None


def _message_list(value: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {what!r} must be a non-empty list of messages (messages format)")
    return parse_turns(value, what, "messages")  # tool calls, tool results and text parts too


def _reply(value: Any, what: str, fmt: str) -> Any:
    """The assistant text of a chosen / rejected field in `fmt` (the whole assistant message when the
    reply calls tools)."""
    if fmt == "text":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field {what!r} is empty or not text")
        _check_text(value, f"field {what!r}")
        return value
    if fmt == "messages":
        msgs = _message_list(value, what)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise ValueError(f"field {what!r} must hold exactly one assistant message")
        return msgs[0] if msgs[0].get("tool_calls") else msgs[0]["content"]
    if not isinstance(value, dict) or "value" not in value:
        raise ValueError(f"field {what!r} must be an object with 'from' and 'value' (sharegpt format)")
    sender = value.get("from", "gpt")
    if isinstance(sender, str) and sender.lower() == "function_call":  # LLaMA-Factory: the reply calls a tool
        return parse_turns([value], what, "sharegpt")[0]
    role = SHAREGPT_ROLES.get(sender.lower()) if isinstance(sender, str) else None
    if role != "assistant":
        raise ValueError(f"field {what!r} must be an assistant reply (from: gpt), got {_brief(sender)}")
    if not isinstance(value["value"], str) or not value["value"].strip():
        raise ValueError(f"field {what!r} has empty or non-text value")
    _check_text(value["value"], f"field {what!r}")
    return value["value"]


def _prompt(record: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    if fmt == "text":
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("field 'prompt' is empty or not text")
        _check_text(prompt, "field 'prompt'")
        msgs = [{"role": "user", "content": prompt}]
    elif fmt == "messages":
        msgs = _message_list(record.get("prompt"), "prompt")
    else:
        turns = record["conversations"]
        if not turns:
            raise ValueError("field 'conversations' must be a non-empty list of turns")
        msgs = parse_turns(turns, "conversations", "sharegpt")  # function_call / observation turns too
    system = record.get("system")
    if isinstance(system, str) and system.strip() and msgs and msgs[0]["role"] != "system":
        _check_text(system, "field 'system'")
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def to_preference(record: Any, fmt: str) -> tuple[list[dict[str, str]], str, str]:
    """(prompt messages, chosen reply, rejected reply) of one row; raises ValueError naming the problem."""
    if not isinstance(record, dict):
        raise ValueError(f"a row must be a JSON object, got {type(record).__name__}")  # noqa: TRY004
    for key in ("chosen", "rejected"):
        if key not in record:
            raise ValueError(f"missing field {key!r}")
    prompt = _prompt(record, fmt)
    chosen, rejected = _reply(record["chosen"], "chosen", fmt), _reply(record["rejected"], "rejected", fmt)
    if _same_reply(chosen, rejected):
        raise ValueError("chosen and rejected are the same reply (nothing to prefer)")
    roles = [m["role"] for m in prompt if m["role"] != "system"]
    if not roles or roles[-1] not in ("user", "tool"):
        raise ValueError("the prompt must end with a user turn (or a tool result)")
    check_conversation([*prompt, _as_message(chosen)])
    return prompt, chosen, rejected


def _as_message(reply: Any) -> dict[str, Any]:
    """A reply as an assistant message: its text, or the message itself when it calls tools."""
    return reply if isinstance(reply, dict) else {"role": "assistant", "content": reply}


def _same_reply(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return json.dumps(_as_message(a), sort_keys=True) == json.dumps(_as_message(b), sort_keys=True)


# -- rendering -----------------------------------------------------------------------------------


def render_pair(tokenizer: Any, prompt: list[dict[str, str]], chosen: str, rejected: str) -> tuple[str, str, str]:
    """Prompt text (with the generation prompt) and each reply's text up to the end-of-turn token."""
    prompt_text, (chosen_text, rejected_text) = render_replies(tokenizer, prompt, (chosen, rejected))
    return prompt_text, chosen_text, rejected_text


def render_replies(
    tokenizer: Any, prompt: list[dict[str, Any]], replies_in: Sequence[Any], tools: list[dict] | None = None
) -> tuple[str, list[str]]:
    """Prompt text (with the generation prompt) and the text of each assistant reply to it, up to the
    end-of-turn token: the prompt / completion split TRL's preference trainers read (DPO, KTO)."""
    prompt_text = _render(tokenizer, prompt, add_generation_prompt=True, tools=tools)
    eos = tokenizer.eos_token or ""
    replies = []
    for reply in replies_in:  # a text, or an assistant message that calls tools
        full = _render(tokenizer, [*prompt, _as_message(reply)], tools=tools)
        if not full.startswith(prompt_text):
            raise ShadowFTError(
                "the chat template renders the prompt differently when a reply follows; cannot split prompt and reply",
                hint="use a template whose rendering with add_generation_prompt=True is a prefix of the "
                "conversation with the reply",
            )
        text = full[len(prompt_text) :]
        # End at the end-of-turn token: TRL appends EOS itself when a reply does not end with it.
        if eos and eos in text:
            text = text[: text.rindex(eos) + len(eos)]
        replies.append(text)
    return prompt_text, replies


# -- the stage -----------------------------------------------------------------------------------


def count_tokens(tokenizer: Any, text: str, max_length: int) -> int:
    """The number of tokens in `text`. A text of more than `CUT_CHARS_PER_TOKEN` characters per token of
    max_length is counted in pieces cut at spaces (the count may differ by a token or so per cut, far
    above max_length), so a long reply is never tokenized whole."""
    piece = CUT_CHARS_PER_TOKEN * max_length
    if len(text) <= piece:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    total, at = 0, 0
    while at < len(text):
        end = len(text)
        if end - at > piece:
            space = text.rfind(" ", at + piece // 2, at + piece)
            end = space if space > at else at + piece
        total += len(tokenizer(text[at:end], add_special_tokens=False)["input_ids"])
        at = end
    return total


def prepare_preferences(spec: DataConfig, tokenizer_dir: Path, out_dir: Path) -> PreferenceStats:
    """Read preference rows from `spec.sources`, render them with the chat template of `tokenizer_dir`
    and write the dataset, tokenizer and ``stats.json`` to `out_dir` (published by an atomic rename).

    Malformed rows (with file and line), a row whose chosen equals its rejected, and an empty result
    raise `ShadowFTError` before anything is written.
    """

    out_dir = Path(out_dir)
    if getattr(spec, "packing", False):
        raise ShadowFTError(
            "data.packing applies to SFT only: DPO batches chosen and rejected replies of one prompt together",
            hint="set data.packing=false with train.objective=dpo",
        )
    from shadowft.modality import is_multimodal

    if is_multimodal(tokenizer_dir):  # a vision-language pair: prompts may hold images, rendered by its processor
        from shadowft.vlm_data import prepare_vlm_preferences

        return prepare_vlm_preferences(spec, tokenizer_dir, out_dir)
    refuse_nonempty(out_dir)
    tok = load_tokenizer(tokenizer_dir)
    problems = _Problems(what="preference data", formats_hint=FORMATS_HINT)
    rows: list[tuple[int, str, list[dict[str, Any]], Any, Any, list[dict] | None]] = []
    per_source: list[PreferenceSourceStats] = []
    max_bytes = record_limit(spec)
    for si, rec, fmt in known_records(
        spec,
        problems,
        per_source,
        lambda name: PreferenceSourceStats(source=name, format="auto"),
        detect_preference_format,
        lambda _: "unrecognised preference row (" + FORMATS_HINT + ")",
        taken=lambda: len(rows),
        check=check_preference_row,  # images, KTO labels: refused with their own hint
    ):
        try:
            prompt, chosen, rejected = to_preference(rec.data, fmt)
            tools = tool_definitions(rec.data.get("tools"))
            with_system_prompt(prompt, spec.system_prompt)
            check_size([*prompt, _as_message(chosen), _as_message(rejected)], max_bytes, tools)
        except ValueError as exc:
            problems.add_error(rec.where, exc)
            continue
        rows.append((si, rec.where, prompt, chosen, rejected, tools))
    problems.raise_if_any()
    if not rows:
        raise ShadowFTError(
            f"the preference data is empty (sources: {', '.join(spec.sources)})",
            hint="add prompt/chosen/rejected rows to the data files or check data.sources",
        )

    columns: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    counts = {"prompt": 0, "chosen": 0, "rejected": 0}
    longest = 0
    check_tool_support(tok, [(where, [*p, _as_message(c)], t) for _, where, p, c, _, t in rows])
    for si, where, prompt, chosen, rejected, tools in rows:
        st = per_source[si]
        pair = rendered(where, lambda p=prompt, c=chosen, r=rejected, t=tools: render_replies(tok, p, (c, r), t))
        texts = dict(zip(("prompt", "chosen", "rejected"), (pair[0], *pair[1]), strict=True))
        n = {k: count_tokens(tok, v, spec.max_length) for k, v in texts.items()}
        length = n["prompt"] + max(n["chosen"], n["rejected"])
        if length > spec.max_length:
            if spec.overlong == "drop" or n["prompt"] >= spec.max_length:
                st.dropped += 1  # dropped, or the prompt alone fills the cutoff: nothing left to compare
                continue
            st.truncated += 1  # DPOTrainer truncates at max_length (keep_start)
        longest = max(longest, length)
        st.pairs += 1
        for k in columns:
            columns[k].append(texts[k])
            counts[k] += n[k]
    dropped = sum(s.dropped for s in per_source)
    if not columns["prompt"]:
        raise ShadowFTError(
            f"all {dropped} preference pairs are longer than data.max_length={spec.max_length} tokens",
            hint="raise data.max_length, or set data.overlong=truncate",
        )
    stats = PreferenceStats(
        pairs=len(columns["prompt"]),
        prompt_tokens=counts["prompt"],
        chosen_tokens=counts["chosen"],
        rejected_tokens=counts["rejected"],
        dropped=dropped,
        truncated=sum(s.truncated for s in per_source),
        max_length=spec.max_length,
        overlong=spec.overlong,
        longest=longest,
        sources=per_source,
    )
    publish_prepared(out_dir, columns, None, tok, stats)
    return stats
