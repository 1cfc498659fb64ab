"""Row formats beyond plain chat: tool calls, content parts, LLaMA-Factory's ``dataset_info.json``, and the
rows a text-only pair must not train on.

Messages are dicts with ``role`` and ``content`` (a string); an assistant message may carry
``tool_calls`` (``[{"type": "function", "function": {"name": str, "arguments": dict}}]``, the form chat
templates read) and a ``tool`` message holds a tool's result. Tool definitions (a conversation's
``tools``) are normalised to ``{"type": "function", "function": {...}}``. Both are rendered by the chat
template's own tools support (``apply_chat_template(..., tools=...)``): a template that drops them is
refused (`tool_support_problem`), never trained on silently.

- The messages format (TRL / OpenAI): ``tool_calls`` on assistant turns, the ``tool`` role, and content
  parts (``[{"type": "text", "text": ...}]``).
- LLaMA-Factory's sharegpt rows: ``function_call`` turns (the call as JSON, ``{"name", "arguments"}``
  or a list of them) and ``observation`` turns (the tool's result), and a ``tools`` column (JSON text or
  a list).
- ``dataset_info.json``: a data source ``DIR/dataset_info.json#NAME`` reads the data set NAME as
  LLaMA-Factory does (`read_dataset_info`): its ``file_name`` (or ``hf_hub_url`` as a `datasets` name),
  ``formatting`` (alpaca / sharegpt / openai), ``columns``, ``tags`` and ``ranking``; rows are turned into
  the canonical formats (`canonical_row`) that the SFT, DPO and KTO readers detect.

Refused with the row's file and line and a hint (`RowRefused`): images, videos or audio (an ``images``
column, ``<image>`` placeholders, image content parts) for a text-only pair; rows labelled for KTO
for SFT or DPO; preference rows for SFT.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowft.errors import ShadowFTError

#: The separator of a data source that names a data set of a ``dataset_info.json``.
INFO_SEPARATOR = "#"
DATASET_INFO = "dataset_info.json"
MEDIA_COLUMNS = ("images", "videos", "audios")
#: LLaMA-Factory's media placeholders in text.
MEDIA_PLACEHOLDER = re.compile(r"<(image|video|audio)>")
KTO_COLUMNS = ("kto_tag", "label")
KTO_HINT = "set train.objective: kto (KTO trains on rows labelled desirable / undesirable)"
PREFERENCE_HINT = "looks like preference data: set train.objective: dpo"
MEDIA_HINT = (
    "this pair is text-only: a vision-language pair (Base and Instruct `...ForConditionalGeneration` with a "
    "vision_config, e.g. Gemma-3) trains image rows (train.objective sft or dpo); for this pair remove the "
    "image/video/audio rows (or the column)"
)
#: videos and audio: no pair trains them (a vision-language pair's rows may hold images only)
AV_HINT = "shadowft trains text and images: remove the video/audio rows (or the column)"
TOOLS_HINT = (
    "use an Instruct model whose chat template supports tools (its apply_chat_template renders `tools`, "
    "`tool_calls` and the `tool` role: Qwen2.5 / Qwen3, Llama 3.1+, the embedded family), or remove the tool rows"
)


class RowRefused(ValueError):
    """A well-formed row that this objective or pair cannot train on (reported with its own hint)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _brief(value: Any, limit: int = 40) -> str:
    if isinstance(value, str):
        return repr(value[:limit] + "...") if len(value) > limit else repr(value)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:limit]
    return f"a {type(value).__name__}"


# -- content parts, tool calls, tool definitions ---------------------------------------------------


def text_content(content: Any, what: str) -> str:
    """The text of a message's content: a string, or a list of text parts (joined as they are).
    An image / audio / video part is refused (`RowRefused`); other values are a ValueError."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{what} has empty or non-text content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(kind, str) and kind.split("_")[0] in ("image", "video", "audio", "input"):
            raise RowRefused(f"{what} part {j} is of type {_brief(kind)}", MEDIA_HINT)
        else:
            raise ValueError(f'{what} part {j} must be {{"type": "text", "text": str}}, got {_brief(part)}')
    return "".join(texts)


def _arguments(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, str):  # OpenAI's form: the arguments as JSON text
        try:
            value = json.loads(value) if value.strip() else {}
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise ValueError(f"{what} arguments are not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} arguments must be a JSON object, got {_brief(value)}")  # noqa: TRY004
    return value


def tool_call(value: Any, what: str) -> dict[str, Any]:
    """One call as templates read it: ``{"type": "function", "function": {"name", "arguments": dict}}``
    (from that form, OpenAI's with arguments as JSON text, or LLaMA-Factory's ``{"name", "arguments"}``)."""
    fn = value.get("function", value) if isinstance(value, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise ValueError(f'{what} must be {{"name": str, "arguments": {{...}}}}, got {_brief(value)}')
    return {"type": "function", "function": {"name": fn["name"], "arguments": _arguments(fn.get("arguments"), what)}}


def tool_calls_from_text(text: str, what: str) -> list[dict[str, Any]]:
    """LLaMA-Factory's function_call turn: the call (or a list of calls) as JSON text."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise ValueError(f'{what} must hold the call as JSON ({{"name": ..., "arguments": {{...}}}})') from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise ValueError(f"{what} holds no call")
    return [tool_call(c, f"{what} call {k}") for k, c in enumerate(calls)]


def tool_definitions(value: Any, what: str = "field 'tools'") -> list[dict[str, Any]] | None:
    """A row's tools (JSON text or a list; empty = None), each as ``{"type": "function", "function": {...}}``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError, ValueError):
            raise ValueError(f"{what} is not valid JSON") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list of tool definitions, got {_brief(value)}")  # noqa: TRY004
    out = []
    for k, t in enumerate(value):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise ValueError(f"{what}[{k}] must be a function definition with a 'name'")
        out.append({"type": "function", "function": fn})
    return out or None


# -- refusals --------------------------------------------------------------------------------------


def _has_media(value: Any) -> bool:
    return bool(value) and not (isinstance(value, str) and not value.strip())


def check_text_only(record: dict[str, Any], images: bool = False) -> None:
    """`RowRefused` for a row with images, videos or audio (a column or a placeholder in its text);
    with `images` (a vision-language pair) only videos and audio are refused."""
    for col in MEDIA_COLUMNS:
        if images and col == "images":
            continue
        if _has_media(record.get(col)):
            raise RowRefused(f"the row has {col} (field {col!r})", AV_HINT if images else MEDIA_HINT)
    for key in ("messages", "conversations", "conversation", "instruction", "input", "prompt"):
        value = record.get(key)
        texts = [value] if isinstance(value, str) else []
        if isinstance(value, list):
            for t in value:
                if isinstance(t, dict):
                    texts += [v for k, v in t.items() if k in ("content", "value") and isinstance(v, str)]
        for text in texts:
            for m in MEDIA_PLACEHOLDER.finditer(text):
                if not (images and m.group(1) == "image"):
                    raise RowRefused(
                        f"field {key!r} holds a {m.group(0)} placeholder (a multimodal row)",
                        AV_HINT if images else MEDIA_HINT,
                    )


TEXT_OBJECTIVE_HINT = (
    "this objective trains text only (a vision-language pair trains image rows with train.objective sft or "
    "dpo): remove the image/video/audio rows (or the column)"
)


def check_text_objective_row(record: Any) -> None:
    """`RowRefused` for a row with images, videos or audio, for an objective that trains text only (KTO,
    GRPO), whatever the pair: the media would be dropped and `<image>` trained as text."""
    if isinstance(record, dict):
        try:
            check_text_only(record)
        except RowRefused as exc:
            raise RowRefused(str(exc), TEXT_OBJECTIVE_HINT) from None


def kto_label(record: dict[str, Any]) -> str | None:
    """The column of a boolean KTO label (``kto_tag`` or ``label``), or None."""
    return next((k for k in KTO_COLUMNS if isinstance(record.get(k), bool)), None)


def check_sft_row(record: Any, images: bool = False) -> None:
    """`RowRefused` for a row SFT must not train on: media (but images, with `images`: a
    vision-language pair), a KTO label, or a preference pair."""
    if not isinstance(record, dict):
        return
    check_text_only(record, images)
    label = kto_label(record)
    if label is not None:
        raise RowRefused(
            f"the row is labelled for KTO (boolean {label!r}: {record[label]}); SFT would learn the undesirable "
            "answers too",
            KTO_HINT,
        )
    if "chosen" in record and "rejected" in record:
        raise RowRefused("the row has chosen and rejected replies (a preference pair)", PREFERENCE_HINT)


def check_preference_row(record: Any, images: bool = False) -> None:
    """`RowRefused` for a row DPO must not train on: media (but images, with `images`: a
    vision-language pair) or a KTO label."""
    if not isinstance(record, dict):
        return
    check_text_only(record, images)
    label = kto_label(record)
    if label is not None and not ("chosen" in record and "rejected" in record):
        raise RowRefused(f"the row is labelled for KTO (boolean {label!r}), not a chosen/rejected pair", KTO_HINT)


# -- tool support of a chat template ---------------------------------------------------------------

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_fn_q7",
        "description": "probe",
        "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}},
    },
}


def uses_tools(msgs: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> bool:
    return bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in msgs)


def tool_support_problem(tokenizer: Any, need_definitions: bool) -> str | None:
    """Why the chat template cannot render tool conversations (None when it can): it must render a
    call's name and arguments, a tool's result, and (when rows have them) the tool definitions."""
    msgs = [
        {"role": "user", "content": "probe_user_u1"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "probe_call_z9", "arguments": {"probe_arg": "probe_v_k3"}}}
            ],
        },
        {"role": "tool", "content": "probe_result_m5"},
        {"role": "assistant", "content": "probe_done_d2"},
    ]
    try:
        text = tokenizer.apply_chat_template(msgs, tools=[_PROBE_TOOL], tokenize=False)
    except Exception as exc:  # noqa: BLE001 - a template that raises on tool turns does not support them
        return f"its chat template fails on a tool conversation ({type(exc).__name__}: {str(exc)[:120]})"
    missing = [
        what
        for what, mark in (
            ("function calls", "probe_call_z9"),
            ("call arguments", "probe_v_k3"),
            ("tool results", "probe_result_m5"),
            *((("tool definitions (`tools`)", "probe_fn_q7"),) if need_definitions else ()),
        )
        if mark not in text
    ]
    if missing:
        return "its chat template does not render " + ", ".join(missing)
    return None


def check_rendered_tools(full: str, msgs: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
    """A ShadowFTError when the rendering lost a call's name, a tool's result or a definition's name."""
    names = [tc["function"]["name"] for m in msgs for tc in m.get("tool_calls") or []]
    names += [t["function"]["name"] for t in tools or []]
    results = [m["content"] for m in msgs if m["role"] == "tool"]
    lost = next((x for x in [*names, *results] if x and x not in full), None)
    if lost is not None:
        raise ShadowFTError(f"the chat template dropped {_brief(lost)} from this tool conversation", hint=TOOLS_HINT)


# -- LLaMA-Factory's dataset_info.json -------------------------------------------------------------


@dataclass
class DatasetAttr:
    """One entry of a ``dataset_info.json``, with LLaMA-Factory's defaults (its `DatasetAttr`)."""

    name: str
    info_file: Path
    file_name: str | None = None
    hf_hub_url: str | None = None
    formatting: str = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    num_samples: int | None = None
    columns: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str | None] = field(default_factory=dict)

    def col(self, key: str) -> str | None:
        defaults = {"prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}
        return self.columns.get(key, defaults.get(key))

    def tag(self, key: str) -> str | None:
        defaults = {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": "human",
            "assistant_tag": "gpt",
            "observation_tag": "observation",
            "function_tag": "function_call",
            "system_tag": "system",
        }
        if self.formatting == "openai":  # LLaMA-Factory's openai rows are role/content messages
            defaults.update(
                role_tag="role",
                content_tag="content",
                user_tag="user",
                assistant_tag="assistant",
                observation_tag="tool",
            )
        return self.tags.get(key, defaults[key])


COLUMN_NAMES = (
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "images",
    "videos",
    "audios",
    "chosen",
    "rejected",
    "kto_tag",
)
TAG_NAMES = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")


def split_info_source(source: str) -> tuple[Path, str] | None:
    """(dataset_info.json path, data set name) of a source ``PATH/dataset_info.json#NAME``, else None."""
    if INFO_SEPARATOR not in source:
        return None
    path, name = source.rsplit(INFO_SEPARATOR, 1)
    if not path.lower().endswith(".json") or not name.strip():
        return None
    return Path(path).expanduser(), name.strip()


def read_dataset_info(source: str) -> DatasetAttr:
    """The attributes of the data set a ``PATH/dataset_info.json#NAME`` source names (refused, with a hint,
    when the file or name is missing or the entry is of a kind shadowft does not read)."""
    parsed = split_info_source(source)
    if parsed is None:
        raise ShadowFTError(f"data source {source!r} is not DIR/dataset_info.json#NAME")
    path, name = parsed
    if not path.is_file():
        raise ShadowFTError(
            f"data source {source!r}: {path} does not exist",
            hint="name a LLaMA-Factory data set as PATH/dataset_info.json#NAME (relative paths are read from "
            f"{Path.cwd()})",
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ShadowFTError(f"{path} is not valid JSON ({str(exc)[:120]})", hint="fix the file") from None
    if not isinstance(info, dict) or not isinstance(info.get(name), dict):
        known = sorted(info) if isinstance(info, dict) else []
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        raise ShadowFTError(
            f"{path} defines no data set {name!r}",
            hint=(f"did you mean {', '.join(close)}? " if close else "")
            + f"it defines {len(known)}: {', '.join(known[:12])}{' ...' if len(known) > 12 else ''}",
        )
    entry = info[name]
    where = f"{path} entry {name!r}"
    for bad in ("script_url", "cloud_file_name"):
        if bad in entry:
            raise ShadowFTError(f"{where} uses {bad}, which shadowft does not read", hint="give a file_name")
    if "file_name" not in entry and "hf_hub_url" not in entry:
        raise ShadowFTError(
            f"{where} has neither file_name nor hf_hub_url",
            hint="shadowft reads local files (file_name) and Hugging Face data sets (hf_hub_url)",
        )
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise ShadowFTError(f"{where}: unknown formatting {formatting!r}", hint="use alpaca, sharegpt or openai")
    columns, tags = entry.get("columns") or {}, entry.get("tags") or {}
    if not isinstance(columns, dict) or not isinstance(tags, dict):
        raise ShadowFTError(f"{where}: columns and tags must be objects", hint="see LLaMA-Factory's data/README.md")
    unknown = sorted(set(columns) - set(COLUMN_NAMES)) + sorted(set(tags) - set(TAG_NAMES))
    if unknown:
        raise ShadowFTError(
            f"{where}: unknown column or tag {', '.join(map(repr, unknown))}",
            hint=f"columns: {', '.join(COLUMN_NAMES)}; tags: {', '.join(TAG_NAMES)}",
        )
    num = entry.get("num_samples")
    return DatasetAttr(
        name=name,
        info_file=path,
        file_name=entry.get("file_name"),
        hf_hub_url=entry.get("hf_hub_url"),
        formatting=formatting,
        ranking=bool(entry.get("ranking", False)),
        subset=entry.get("subset"),
        split=entry.get("split", "train"),
        num_samples=num if isinstance(num, int) and num > 0 else None,
        columns=dict(columns),
        tags=dict(tags),
    )


def info_data_path(attr: DatasetAttr) -> Path | None:
    """The local file or folder of a data set (its file_name, relative to the dataset_info.json)."""
    if attr.file_name is None:
        return None
    return (attr.info_file.parent / attr.file_name).expanduser()


def source_files(source: str) -> list[Path]:
    """The local files a data source reads (for its fingerprint): the file itself, or for a
    ``dataset_info.json#NAME`` source the dataset_info.json and the data it names."""
    parsed = split_info_source(source)
    if parsed is None:
        p = Path(source).expanduser()
        return [p] if p.exists() else []
    files = [parsed[0]] if parsed[0].is_file() else []
    try:
        data = info_data_path(read_dataset_info(source))
    except ShadowFTError:
        return files
    return files + ([data] if data is not None and data.exists() else [])


def _get(record: dict[str, Any], column: str | None) -> Any:
    return record.get(column) if column else None


def canonical_row(record: Any, attr: DatasetAttr) -> Any:
    """A LLaMA-Factory row as one of shadowft's canonical rows: sharegpt (``conversations`` of from/value
    with human / gpt / function_call / observation / system, the preference readers' ``chosen`` /
    ``rejected`` and KTO's ``kto_tag``), messages (openai formatting), or alpaca / TRL's prompt rows.
    Media and KTO columns are kept under their canonical names, so the refusals see them."""
    if not isinstance(record, dict):
        return record
    out: dict[str, Any] = {}
    for key in ("system", "tools", "images", "videos", "audios", "kto_tag"):
        value = _get(record, attr.col(key))
        if value is not None:
            out[key] = value
    if attr.formatting == "alpaca":
        return _canonical_alpaca(record, attr, out)
    turns = _get(record, attr.col("messages"))
    role_tag, content_tag = attr.tag("role_tag"), attr.tag("content_tag")
    names = {
        attr.tag("user_tag"): "human",
        attr.tag("assistant_tag"): "gpt",
        attr.tag("observation_tag"): "observation",
        attr.tag("function_tag"): "function_call",
        attr.tag("system_tag"): "system",
    }
    names.pop(None, None)
    if attr.formatting == "openai":
        names.setdefault("tool", "observation")

    messages_col = attr.col("messages")

    def turn(t: Any, what: str) -> Any:
        if not isinstance(t, dict) or role_tag not in t or content_tag not in t:
            raise ValueError(f"{what} misses the field {role_tag!r} or {content_tag!r} (the tags of {attr.name!r})")
        role = t[role_tag]
        if not isinstance(role, str) or role not in names:
            raise ValueError(
                f"{what} has unknown role {_brief(role)} (the tags of {attr.name!r} accept: {', '.join(map(str, names))})"
            )
        canon: dict[str, Any] = {"from": names[role], "value": t[content_tag]}
        if t.get("tool_calls"):  # openai: an assistant turn that calls tools
            canon["tool_calls"] = t["tool_calls"]
        return canon

    if turns is None:
        raise ValueError(f"missing field {attr.col('messages')!r} (columns.messages of {attr.name!r})")
    if isinstance(turns, list):
        out["conversations"] = [turn(t, f"{messages_col}[{i}]") for i, t in enumerate(turns)]
    else:
        out["conversations"] = turns
    for side in ("chosen", "rejected"):
        value = _get(record, attr.col(side))
        if value is not None:
            out[side] = turn(value, f"field {side!r}") if isinstance(value, dict) else value
    if not attr.ranking:
        out.pop("chosen", None), out.pop("rejected", None)
    return out


def _canonical_alpaca(record: dict[str, Any], attr: DatasetAttr, out: dict[str, Any]) -> dict[str, Any]:
    prompt, query = _get(record, attr.col("prompt")), _get(record, attr.col("query"))
    history = _get(record, attr.col("history"))
    chosen, rejected = _get(record, attr.col("chosen")), _get(record, attr.col("rejected"))
    if attr.ranking and chosen is not None and rejected is not None:  # TRL's conversational preference rows
        msgs: list[dict[str, Any]] = []
        if isinstance(out.get("system"), str) and out["system"].strip():
            msgs.append({"role": "system", "content": out.pop("system")})
        for pair in history if isinstance(history, list) else []:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        text = "\n\n".join(x for x in (prompt, query) if isinstance(x, str) and x.strip()) or prompt
        msgs.append({"role": "user", "content": text})
        out.update(
            prompt=msgs,
            chosen=[{"role": "assistant", "content": chosen}],
            rejected=[{"role": "assistant", "content": rejected}],
        )
        return out
    if prompt is not None:
        out["instruction"] = prompt
    if query is not None:
        out["input"] = query
    response = _get(record, attr.col("response"))
    if response is not None:
        out["output"] = response
    elif "instruction" in out:
        out["output"] = None  # unsupervised rows (pretraining text): nothing to learn, said so
    if history is not None:
        out["history"] = history
    return out
