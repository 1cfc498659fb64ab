"""Dataset preparation: read conversations, render them with the Instruct chat template, tokenize, and
mask the labels to the assistant tokens.

Base is trained with the Instruct model's chat template (as in the paper), so the same prepared dataset
serves the Shadow-FT run (train Base) and the `direct` baseline (train Instruct).

Layout of a prepared dataset directory::

    dataset/      `datasets.Dataset.save_to_disk` with columns input_ids, labels (int32 lists)
    tokenizer/    the tokenizer (and chat template) the ids were made with
    stats.json    counts: samples, tokens, assistant tokens, dropped, truncated, per source

Assistant spans are found by rendering prefixes of the conversation (``messages[:i]`` with the generation
prompt, and ``messages[:i+1]``) and checking that each is a prefix of the full rendering; this works for
any template without ``{% generation %}`` markers. Templates that render earlier assistant turns
differently from the last one (Qwen3's think blocks) fall back to locating the message content.
A long conversation renders each prefix from a window of its last few messages instead (linear in
turns, not quadratic), checked against the full rendering; a template for which the windows do not
agree with it gets the exact prefix renderings.

Hostile input ends in `ShadowFTError` naming the file and line: records over `data.max_record_mb`
(refused before they are parsed), invalid UTF-8, JSON nested too deeply, roles or fields of the
wrong type, text with lone surrogates. A long sample is cut before it is tokenized where the cut
cannot change the tokens kept.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadowft.config import ZOO_PREFIX, DataConfig
from shadowft.errors import ShadowFTError
from shadowft.files import atomic_output_dir, refuse_nonempty
from shadowft.formats import (
    TOOLS_HINT,
    RowRefused,
    canonical_row,
    check_rendered_tools,
    check_sft_row,
    info_data_path,
    read_dataset_info,
    split_info_source,
    text_content,
    tool_call,
    tool_calls_from_text,
    tool_definitions,
    tool_support_problem,
    uses_tools,
)

IGNORE_INDEX = -100
MAX_REPORTED = 8
#: data.max_record_mb's default in bytes, for callers without a DataConfig.
DEFAULT_MAX_RECORD_BYTES = 16_000_000

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",  # LLaMA-Factory: the assistant calls a tool (the call as JSON)
    "observation": "tool",  # LLaMA-Factory: the tool's result
}
MESSAGE_ROLES = {"system", "user", "assistant", "tool"}
LOCAL_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


@dataclass
class SourceStats:
    """Counts for one source."""

    source: str
    format: str
    rows: int = 0
    samples: int = 0
    dropped: int = 0
    truncated: int = 0
    tokens: int = 0
    assistant_tokens: int = 0


@dataclass
class DataStats:
    """What `prepare_dataset` produced (also written to ``stats.json``)."""

    samples: int
    tokens: int
    assistant_tokens: int
    dropped: int
    truncated: int
    max_length: int
    overlong: str
    longest: int
    mean_length: float
    sources: list[SourceStats] = field(default_factory=list)
    out_dir: str = ""
    packing: bool = False  # data.packing: the train stage packs batches padding-free
    images: int = 0  # images the samples hold (a vision-language pair's data; `shadowft.vlm_data`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], out_dir: str | Path = "") -> DataStats:
        d = {"out_dir": str(out_dir), **d}
        d["sources"] = [SourceStats(**s) for s in d.get("sources", [])]
        return cls(**d)


@dataclass
class _Record:
    where: str  # "file line N" / "file row N"
    data: Any


class _Problems:
    """Malformed records, reported together (the first few with file and line) after reading."""

    def __init__(self, what: str = "training data", formats_hint: str | None = None) -> None:
        self.items: list[str] = []
        self.count = 0
        self.refused = 0  # rows that are well formed but cannot be trained on (each kind with its hint)
        self.hints: dict[str, None] = {}
        self.what = what
        self.formats_hint = formats_hint or (
            "accepted formats: messages (role/content), sharegpt (from/value), alpaca (instruction/input/output)"
        )

    def add(self, where: str, problem: str, hint: str | None = None) -> None:
        self.count += 1
        if hint is not None:
            self.refused += 1
            self.hints.setdefault(hint)
        if len(self.items) < MAX_REPORTED:
            self.items.append(f"{where}: {problem}")

    def add_error(self, where: str, exc: ValueError) -> None:
        """A record's ValueError (a `RowRefused` carries its own hint)."""
        self.add(where, str(exc), exc.hint if isinstance(exc, RowRefused) else None)

    def raise_if_any(self) -> None:
        if not self.count:
            return
        more = f"\n  ... and {self.count - len(self.items)} more" if self.count > len(self.items) else ""
        malformed = self.count - self.refused
        head = " and ".join(
            ([f"{malformed} malformed record(s)"] if malformed else [])
            + ([f"{self.refused} record(s) it cannot train on"] if self.refused else [])
        )
        hints = list(self.hints) + (["fix or remove these records; " + self.formats_hint] if malformed else [])
        raise ShadowFTError(
            f"{head} in the {self.what}:\n  " + "\n  ".join(self.items) + more,
            hint="; ".join(hints),
        )


# -- reading -------------------------------------------------------------------------------------


def _brief(value: Any, limit: int = 40) -> str:
    """A short, safe rendering of a value for a message (no repr of a huge or deeply nested value)."""
    if isinstance(value, str):
        return repr(value[:limit] + "...") if len(value) > limit else repr(value)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:limit]
    return f"a {type(value).__name__}"


def text_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode (a lone surrogate: JSON's `\\ud800` decodes to one), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate \\u{ord(text[exc.start]):04x} at character {exc.start + 1} (not valid Unicode)"
    return None


def _decode_line(raw: bytes, first: bool) -> tuple[str | None, str | None]:
    """(text, None) or (None, problem) for one line of bytes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 4].hex(" ")
        return None, f"invalid UTF-8 at byte {exc.start + 1} of the line ({bad}...): save the file as UTF-8"
    return (text[1:] if first and text.startswith("\ufeff") else text), None


def _loads(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, problem) for one JSON text."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, _json_problem(exc, text)
    except RecursionError:
        return None, "invalid JSON (nested too deeply)"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, f"invalid JSON ({str(exc)[:120]})"


def _too_big(size: int, max_bytes: int) -> str:
    return f"the record is {size:,} bytes, over data.max_record_mb={max_bytes / 1e6:g} ({max_bytes:,} bytes)"


def _read_jsonl(path: Path, problems: _Problems, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[_Record]:
    """One record per line, read in bytes: a line over `max_bytes` is skipped unread (never held whole)."""
    with path.open("rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(max_bytes + 2)
            if not raw:
                return
            lineno += 1
            where = f"{path} line {lineno}"
            if len(raw.rstrip(b"\r\n")) > max_bytes:
                size = len(raw.rstrip(b"\r\n"))
                while not raw.endswith(b"\n"):  # skip the rest of the line in chunks
                    raw = fh.readline(1 << 20)
                    if not raw:
                        break
                    size += len(raw.rstrip(b"\r\n"))
                problems.add(where, _too_big(size, max_bytes))
                continue
            if not raw.strip():
                continue
            text, problem = _decode_line(raw.rstrip(b"\r\n"), first=lineno == 1)
            if text is None:
                problems.add(where, str(problem))
                continue
            value, problem = _loads(text)  # without its newline, an error at the end stays on this line
            if problem is not None:
                problems.add(where, problem)
            else:
                yield _Record(where, value)


def _json_problem(exc: json.JSONDecodeError, text: str) -> str:
    """The decoder's message with the column it stopped at; a record cut short says so."""
    if exc.pos >= len(text.rstrip()):
        return f"invalid JSON (the record ends at column {len(text.rstrip())} before it is complete: a missing `}}` or `]`?)"
    return f"invalid JSON ({exc.msg} at column {exc.colno})"


def _read_json(path: Path, problems: _Problems, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[_Record]:
    """A JSON array of records (or {"data": [...]}); each record is reported by the line it starts on."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        problems.add(f"{path} line {line}", f"invalid UTF-8 at byte {col} of the line: save the file as UTF-8")
        return
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.add(f"{path} line {exc.lineno}", f"invalid JSON ({exc.msg} at column {exc.colno})")
        return
    except RecursionError:
        problems.add(f"{path} line 1", "invalid JSON (nested too deeply)")
        return
    except ValueError as exc:
        problems.add(f"{path} line 1", f"invalid JSON ({str(exc)[:120]})")
        return
    if isinstance(whole, dict) and isinstance(whole.get("data"), list) and len(whole) == 1:
        yield from (_Record(f"{path} item {i + 1}", r) for i, r in enumerate(whole["data"]))
        return
    if not isinstance(whole, list):
        problems.add(f"{path} line 1", "a .json file must hold a list of records (or use .jsonl)")
        return
    # Walk the array again with raw_decode to learn the line each element starts on (and its size).
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0
    for item in whole:
        while text[pos] in " \t\r\n,":
            pos += 1
        _, end = dec.raw_decode(text, pos)
        line += text.count("\n", counted, pos)
        counted = pos
        if end - pos > max_bytes // 4 and len(text[pos:end].encode("utf-8", "surrogatepass")) > max_bytes:
            problems.add(
                f"{path} line {line}", _too_big(len(text[pos:end].encode("utf-8", "surrogatepass")), max_bytes)
            )
        else:
            yield _Record(f"{path} line {line}", item)
        pos = end


def _read_parquet(path: Path, problems: _Problems) -> Iterator[_Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        problems.add(str(path), f"cannot read parquet ({exc})")
        return
    for i, row in enumerate(table.to_pylist()):
        yield _Record(f"{path} row {i + 1}", row)


def _read_hub(name: str, split: str, problems: _Problems, subset: str | None = None) -> Iterator[_Record]:
    import datasets

    try:
        ds = datasets.load_dataset(name, subset, split=split)
    except Exception as exc:  # noqa: BLE001 - network, missing split, missing dataset
        raise ShadowFTError(
            f"cannot load data source {name!r} (split {split!r}): {type(exc).__name__}: {exc}",
            hint="local sources must be existing .jsonl, .json or .parquet files; a `datasets` name needs "
            "network access or a populated HF cache",
        ) from None
    for i, row in enumerate(ds):
        yield _Record(f"{name}[{split}] row {i + 1}", row)


def looks_local(ref: str) -> bool:
    """A path the user meant as a local file or dir (not a hub id like `org/name`, not `zoo:`)."""
    if split_info_source(ref) is not None:
        return True  # PATH/dataset_info.json#NAME
    return not ref.startswith(ZOO_PREFIX) and (
        ref.startswith((".", "/", "~")) or ref.count("/") > 1 or Path(ref).suffix.lower() in LOCAL_SUFFIXES
    )


def check_sources_exist(sources: list[str]) -> None:
    """Fail in milliseconds on a local data file that is not there (before any model is loaded)."""
    for source in sources:
        if split_info_source(source) is not None:
            attr = read_dataset_info(source)  # the file and the name exist, the entry is one shadowft reads
            data = info_data_path(attr)
            if data is not None and not data.exists():
                raise ShadowFTError(
                    f"data source {source!r}: its file_name {attr.file_name!r} does not exist ({data})",
                    hint=f"file_name is read relative to {attr.info_file.parent}",
                )
            continue
        if looks_local(source) and not Path(source).expanduser().exists():
            raise ShadowFTError(
                f"data source {source!r} does not exist",
                hint=f"check the path (relative paths are read from {Path.cwd()}); local sources are "
                ".jsonl, .json or .parquet files, anything else is read as a `datasets` name",
            )


def _read_source(
    source: str, split: str, problems: _Problems, max_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> tuple[str, Iterator[_Record]]:
    if source.startswith(ZOO_PREFIX):
        raise ShadowFTError(
            f"data source {source!r} is a placeholder",
            hint="resolve placeholders with RunConfig.resolve(...) before preparing data",
        )
    if split_info_source(source) is not None:
        return _read_info_source(source, split, problems, max_bytes)
    path = Path(source).expanduser()
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if path.is_dir():  # a dataset repo snapshot or a folder of data files: `datasets` reads it
        return str(path), _read_hub(str(path), split, problems)
    if path.exists():
        if kind is None:
            raise ShadowFTError(
                f"data source {source}: unsupported file type", hint="use .jsonl, .json or .parquet files"
            )
        if kind == "parquet":
            return str(path), _read_parquet(path, problems)
        reader = _read_jsonl if kind == "jsonl" else _read_json
        return str(path), reader(path, problems, max_bytes)
    if kind is not None or source.startswith((".", "/", "~")):
        raise ShadowFTError(f"data file {source} does not exist", hint="check data.sources in the config")
    return source, _read_hub(source, split, problems)


def _read_info_source(source: str, split: str, problems: _Problems, max_bytes: int) -> tuple[str, Iterator[_Record]]:
    """A data set of a LLaMA-Factory ``dataset_info.json``: its rows, as canonical rows (`canonical_row`)."""
    attr = read_dataset_info(source)
    data = info_data_path(attr)
    if data is None:
        records = _read_hub(str(attr.hf_hub_url), attr.split, problems, attr.subset)
    else:
        if not data.exists():
            raise ShadowFTError(f"data source {source!r}: {data} does not exist", hint="check file_name")
        files = sorted(f for f in data.iterdir() if f.is_file()) if data.is_dir() else [data]
        bad = [f.name for f in files if f.suffix.lower() not in LOCAL_SUFFIXES]
        if bad or not files:
            raise ShadowFTError(
                f"data source {source!r}: {data} holds {', '.join(bad[:3]) or 'no files'}",
                hint="shadowft reads .json, .jsonl and .parquet data files",
            )
        records = _chain(_read_source(str(f), split, problems, max_bytes)[1] for f in files)

    def canonical() -> Iterator[_Record]:
        n = 0
        for rec in records:
            if attr.num_samples is not None and n >= attr.num_samples:
                return
            n += 1
            try:
                yield _Record(rec.where, canonical_row(rec.data, attr))
            except ValueError as exc:
                problems.add_error(rec.where, exc)

    return f"{source}", canonical()


def _chain(parts: Iterator[Iterator[_Record]]) -> Iterator[_Record]:
    for part in parts:
        yield from part


# -- formats -------------------------------------------------------------------------------------


def detect_format(record: Any) -> str | None:
    """messages / sharegpt / alpaca, from the keys of one record (None when it matches none)."""
    if not isinstance(record, dict):
        return None
    for key in ("messages", "conversations", "conversation"):
        turns = record.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            if "from" in turns[0] and "value" in turns[0]:
                return "sharegpt"
            if "role" in turns[0] and "content" in turns[0]:
                return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def to_messages(record: Any, fmt: str) -> list[dict[str, Any]]:
    """Convert one record to [{'role', 'content'}] in `fmt`; raises ValueError naming the problem."""
    return to_conversation(record, fmt)[0]


def to_conversation(record: Any, fmt: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages of one record in `fmt` and its tool definitions (None without); raises ValueError
    naming the problem (`RowRefused` for a row that cannot be trained on, with its hint)."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")  # noqa: TRY004 (caught as a record problem)
    tools = tool_definitions(record.get("tools"))
    if tools:
        _check_text(json.dumps(tools, ensure_ascii=False), "field 'tools'")
    if fmt == "alpaca":
        return _alpaca(record), tools
    key = next((k for k in ("messages", "conversations", "conversation") if k in record), None)
    if key is None:
        raise ValueError(f"missing field 'messages' or 'conversations' ({fmt} format)")
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"field {key!r} must be a non-empty list of turns")
    msgs: list[dict[str, Any]] = []
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    msgs += parse_turns(turns, key, fmt)
    if isinstance(system, str):
        _check_text(system, "field 'system'")
    return msgs, tools


def parse_turns(turns: list[Any], key: str, fmt: str) -> list[dict[str, Any]]:
    """Messages of a list of turns in the messages (role/content) or sharegpt (from/value) format, with
    tool calls (``tool_calls``; sharegpt's ``function_call`` turns), tool results (the ``tool`` role;
    sharegpt's ``observation``) and text content parts."""
    msgs: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        what = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{what} is not an object")  # noqa: TRY004
        calls = None
        if fmt == "sharegpt":
            if "from" not in turn or "value" not in turn:
                raise ValueError(f"{what} missing field 'from' or 'value' (sharegpt format)")
            raw_role, content = turn["from"], turn["value"]
            role = SHAREGPT_ROLES.get(raw_role.lower()) if isinstance(raw_role, str) else None
            if role == "assistant" and raw_role.lower() == "function_call":
                if not isinstance(content, str):
                    raise ValueError(f"{what} (function_call) must hold the call as JSON text")
                calls, content = tool_calls_from_text(content, f"{what} (function_call)"), ""
        else:
            if "role" not in turn or ("content" not in turn and not turn.get("tool_calls")):
                raise ValueError(f"{what} missing field 'role' or 'content' (messages format)")
            raw_role, content = turn["role"], turn.get("content")
            role = raw_role if isinstance(raw_role, str) and raw_role in MESSAGE_ROLES else None
        if role is None:
            allowed = sorted(SHAREGPT_ROLES) if fmt == "sharegpt" else sorted(MESSAGE_ROLES)
            raise ValueError(f"{what} has unknown role {_brief(raw_role)} (allowed: {', '.join(allowed)})")
        if turn.get("tool_calls"):
            if role != "assistant":
                raise ValueError(f"{what} ({role}) has tool_calls: only assistant turns call tools")
            value = turn["tool_calls"]
            if not isinstance(value, list):
                raise ValueError(f"{what} tool_calls must be a list of calls")
            calls = [tool_call(c, f"{what} tool_calls[{k}]") for k, c in enumerate(value)]
        if calls and content is None:
            content = ""
        content = text_content(content, f"{what} ({role})")
        if not calls and not content.strip():
            raise ValueError(f"{what} ({role}) has empty or non-text content")
        _check_text(content, f"{what} ({role}) content")
        msg: dict[str, Any] = {"role": role, "content": content}
        if calls:
            for c in calls:
                _check_text(json.dumps(c, ensure_ascii=False), f"{what} ({role}) tool call")
            msg["tool_calls"] = calls
        msgs.append(msg)
    return msgs


def _check_text(text: str, what: str) -> None:
    """ValueError naming `what` when `text` is not valid Unicode (it could not be tokenized or saved)."""
    problem = text_problem(text)
    if problem:
        raise ValueError(f"{what} {problem}")


def _alpaca(record: dict[str, Any]) -> list[dict[str, str]]:
    for k in ("instruction", "output"):
        if k not in record:
            raise ValueError(f"missing field {k!r} (alpaca format)")
        if not isinstance(record[k], str) or not record[k].strip():
            raise ValueError(f"field {k!r} is empty or not text")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("field 'input' is not text")  # noqa: TRY004
    msgs: list[dict[str, str]] = []
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise ValueError("field 'history' must be a list of [question, answer] pairs")  # noqa: TRY004
    for j, pair in enumerate(history):
        if not (
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)
        ):
            raise ValueError(f"history[{j}] must be a [question, answer] pair of non-empty texts")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = record["instruction"] if not extra.strip() else f"{record['instruction']}\n\n{extra}"
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    for k in ("system", "instruction", "input", "output"):
        if isinstance(record.get(k), str):
            _check_text(record[k], f"field {k!r}")
    for j, pair in enumerate(history):
        _check_text(pair[0] + pair[1], f"history[{j}]")
    return msgs


def check_conversation(msgs: list[dict[str, Any]]) -> None:
    """Structural checks: system only first, a user turn before the first answer, a tool result only
    after a tool call (or another result), ends with an answer (a reply or a call)."""
    for i, m in enumerate(msgs):
        if m["role"] == "system" and i != 0:
            raise ValueError(f"turn {i}: a system message may only come first")
        if m["role"] == "tool":
            prev = msgs[i - 1] if i else None
            if prev is None or not (prev["role"] == "tool" or prev.get("tool_calls")):
                raise ValueError(f"turn {i}: a tool result (observation) must follow a tool call (function_call)")
    roles = [m["role"] for m in msgs if m["role"] != "system"]
    if "assistant" not in roles:
        raise ValueError("no assistant turn (nothing to learn)")
    if roles[0] != "user":
        raise ValueError("the conversation must start with a user turn (after an optional system message)")
    if roles[-1] != "assistant":
        raise ValueError("the conversation must end with an assistant turn")


# -- tokenization --------------------------------------------------------------------------------


def _render(
    tokenizer, msgs: list[dict[str, Any]], add_generation_prompt: bool = False, tools: list[dict] | None = None
) -> str:
    """The template's rendering; `tools` only when there are some (a conversation without them renders
    exactly as it did before tools were supported)."""
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)


#: Conversations of more messages than this find their spans from windows of a few messages.
EXACT_SPANS_UPTO = 24
#: How far back (in messages) a window may reach for the user turn it starts with.
WINDOW_REACH = 16
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters around each message's placeholder


def assistant_char_spans(
    tokenizer, msgs: list[dict[str, Any]], tools: list[dict] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant answer (content or tool
    calls, plus the template's end-of-turn marker, e.g. ``<|im_end|>``) by prefix rendering. Tool
    results and tool definitions are outside every span (they are in the prompts)."""
    full = _render(tokenizer, msgs, tools=tools)
    if uses_tools(msgs, tools):
        check_rendered_tools(full, msgs, tools)
        return full, _exact_spans(tokenizer, msgs, full, tools)
    if len(msgs) > EXACT_SPANS_UPTO:
        spans = _windowed_spans(tokenizer, msgs, full)
        if spans is not None:
            return full, spans
    return full, _exact_spans(tokenizer, msgs, full)


def _trim_after_eos(full: str, start: int, end: int, eos: str) -> int:
    """Do not train on whitespace the template puts after the end-of-turn token."""
    if not eos:
        return end
    j = end
    while j > 0 and full[j - 1].isspace():
        j -= 1
    if not full.endswith(eos, 0, j):
        return end
    while end > start and full[end - 1] in " \t\r\n":
        end -= 1
    return end


def _exact_spans(
    tokenizer, msgs: list[dict[str, Any]], full: str, tools: list[dict] | None = None
) -> list[tuple[int, int]]:
    """Spans from the renderings of every prefix (quadratic in turns: used for short conversations)."""
    eos = tokenizer.eos_token or ""
    return [_exact_span(tokenizer, msgs, full, i, eos, tools) for i, m in enumerate(msgs) if m["role"] == "assistant"]


def _exact_span(
    tokenizer, msgs: list[dict[str, Any]], full: str, i: int, eos: str, tools: list[dict] | None = None
) -> tuple[int, int]:
    """The span of assistant turn i, from the renderings of ``messages[:i]`` and ``messages[:i+1]``."""
    m = msgs[i]
    prompt = _render(tokenizer, msgs[:i], add_generation_prompt=True, tools=tools)
    if not full.startswith(prompt):
        raise ShadowFTError(
            "the chat template renders a conversation prefix differently from the full conversation; "
            "cannot locate the assistant turns",
            hint="use a template whose rendering of messages[:i] with add_generation_prompt=True is a "
            "prefix of the full conversation",
        )
    start = len(prompt)
    upto = _render(tokenizer, msgs[: i + 1], tools=tools)
    if full.startswith(upto) and len(upto) > start:
        end = len(upto)
    else:
        # Earlier turns rendered differently when they are not last (e.g. Qwen3 drops think blocks):
        # find the content after the prompt and extend over the end-of-turn token.
        at = full.find(m["content"], start) if m["content"] else -1
        if at < 0:
            raise ShadowFTError(
                f"cannot find assistant turn {i} in the rendered conversation",
                hint="the chat template rewrites assistant content; prepare this data with a simpler template",
            )
        end = at + len(m["content"])
        if eos and full.startswith(eos, end):
            end += len(eos)
    return start, _trim_after_eos(full, start, end, eos)


def _windowed_spans(tokenizer, msgs: list[dict[str, str]], full: str) -> list[tuple[int, int]] | None:
    """The spans `_exact_spans` finds, from renderings of a few messages each (linear in turns), or
    None when this template and conversation do not allow it (then the exact way is used).

    Every content is replaced by a unique placeholder and the conversation rendered once more (the
    skeleton); it must give `full` back when the contents are put back (the template copies contents
    as they are). For assistant turn i, the prefix ``messages[:i]`` is rendered from a window: the
    system message, then the messages from a user turn at least two before i (the first turns, which
    have none, are rendered whole: their prefixes are short). Past the window's first
    message (whose rendering may differ: a default system prompt, a merged system message), the
    window's rendering must be a substring of the skeleton at the same message; it then gives the
    prefix's length. A template whose rendering depends on messages outside the window fails that
    check and gets the exact spans.
    """
    if any(_OPEN in m["content"] or _CLOSE in m["content"] for m in msgs):
        return None
    marks = [f"{_OPEN}{k}{_CLOSE}" for k in range(len(msgs))]
    skel_msgs = [{"role": m["role"], "content": mark} for m, mark in zip(msgs, marks, strict=True)]
    try:
        skel = _render(tokenizer, skel_msgs)
    except Exception:  # noqa: BLE001 - a template that refuses the placeholders: use the exact way
        return None
    if skel.count(_OPEN) != len(msgs):
        return None
    pos: list[int] = []
    at = 0
    for mark in marks:
        at = skel.find(mark, at)
        if at < 0:
            return None
        pos.append(at)
        at += len(mark)
    pieces, prev = [], 0
    for p, mark, m in zip(pos, marks, msgs, strict=True):
        pieces += [skel[prev:p], m["content"]]
        prev = p + len(mark)
    if "".join(pieces) + skel[prev:] != full:
        return None  # the template changes contents (trims them, splits think blocks): exact way
    shift = [0]
    for mark, m in zip(marks, msgs, strict=True):
        shift.append(shift[-1] + len(m["content"]) - len(mark))

    def to_full(p: int) -> int:  # a skeleton position outside any placeholder -> its position in `full`
        return p + shift[bisect.bisect_left(pos, p)]

    eos = tokenizer.eos_token or ""
    head = skel_msgs[:1] if msgs[0]["role"] == "system" else []
    first = len(head)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        s = next((j for j in range(i - 2, max(first, i - 2 - WINDOW_REACH) - 1, -1) if msgs[j]["role"] == "user"), None)
        if s is None:
            if i > EXACT_SPANS_UPTO:
                return None
            spans.append(_exact_span(tokenizer, msgs, full, i, eos))  # an early turn: its prefix is short
            continue
        anchor, q = marks[s + 1], pos[s + 1]
        window = head + skel_msgs[s:i]
        try:
            prompt = _render(tokenizer, window, add_generation_prompt=True)
            upto = _render(tokenizer, [*window, skel_msgs[i]])
        except Exception:  # noqa: BLE001
            return None
        r, r2 = prompt.find(anchor), upto.find(anchor)
        if r < 0 or r2 < 0 or not skel.startswith(prompt[r:], q):
            return None
        start_s = q + len(prompt) - r
        start = to_full(start_s)
        end_s = q + len(upto) - r2
        if skel.startswith(upto[r2:], q) and end_s > start_s:
            end = to_full(end_s)
        else:  # as in the exact way: the content after the prompt, and the end-of-turn token after it
            if pos[i] < start_s:
                return None
            end = to_full(pos[i]) + len(m["content"])
            if eos and full.startswith(eos, end):
                end += len(eos)
        spans.append((start, _trim_after_eos(full, start, end, eos)))
    return spans


#: A sample whose rendering is longer than this many characters per token of data.max_length is cut
#: before it is tokenized (then only the first tokens are kept; see `tokenize_conversation`).
CUT_CHARS_PER_TOKEN = 16
CUT_MARGIN_TOKENS = 64


def tokenize_conversation(
    tokenizer, msgs: list[dict[str, Any]], max_length: int | None = None, tools: list[dict] | None = None
) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 outside assistant answers) for one conversation.

    With `max_length`, a rendering of more than `CUT_CHARS_PER_TOKEN` characters per token is cut (at a
    space) before it is tokenized: when the cut text still gives more than max_length + a margin of
    tokens, the cut cannot reach the tokens kept, and the first max_length + 1 are returned (the caller
    sees the sample is overlong). Otherwise the whole rendering is tokenized.
    """
    full, spans = assistant_char_spans(tokenizer, msgs, tools)
    enc = None
    if max_length is not None and len(full) > CUT_CHARS_PER_TOKEN * max_length:
        budget = CUT_CHARS_PER_TOKEN * max_length
        cut = max(full.rfind(" ", budget // 2, budget), full.rfind("\n", budget // 2, budget))
        part = tokenizer(full[: cut if cut > 0 else budget], add_special_tokens=False, return_offsets_mapping=True)
        if len(part["input_ids"]) > max_length + CUT_MARGIN_TOKENS:
            enc = {k: part[k][: max_length + 1] for k in ("input_ids", "offset_mapping")}
    if enc is None:
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    return ids, span_labels(ids, enc["offset_mapping"], spans)


def span_labels(ids: list[int], offsets: Any, spans: list[tuple[int, int]]) -> list[int]:
    """Labels for tokens `ids` with character `offsets`: the token where it starts inside an
    assistant span (sorted character `spans`), -100 elsewhere."""
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for t, (a, b) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= a:
            k += 1
        if k < len(spans) and b > a and spans[k][0] <= a < spans[k][1]:
            labels[t] = ids[t]
    return labels


def load_tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as exc:  # noqa: BLE001
        raise ShadowFTError(
            f"cannot load a tokenizer from {tokenizer_dir}: {exc}", hint="pass the Instruct model directory"
        ) from None
    if not getattr(tok, "chat_template", None):
        raise ShadowFTError(
            f"the tokenizer in {tokenizer_dir} has no chat template",
            hint="Shadow-FT trains Base with the Instruct model's chat template: pass the Instruct model dir",
        )
    if not getattr(tok, "is_fast", False):
        raise ShadowFTError(f"the tokenizer in {tokenizer_dir} is not a fast tokenizer (offsets are needed)")
    return tok


# -- the stage -----------------------------------------------------------------------------------


def record_limit(spec: DataConfig) -> int:
    """data.max_record_mb in bytes."""
    return int(getattr(spec, "max_record_mb", DEFAULT_MAX_RECORD_BYTES / 1e6) * 1_000_000)


def check_size(msgs: list[dict[str, Any]], max_bytes: int, tools: list[dict] | None = None) -> None:
    """ValueError when a record's text is over the limit (rows of parquet files and `datasets`, whose
    size is not known before they are read)."""
    chars = sum(len(m["content"]) + (len(json.dumps(m["tool_calls"])) if m.get("tool_calls") else 0) for m in msgs)
    chars += len(json.dumps(tools)) if tools else 0
    if chars > max_bytes:
        raise ValueError(_too_big(chars, max_bytes).replace("bytes,", "characters of text,", 1))


def check_tool_support(tok: Any, convs: list[tuple[str, list[dict[str, Any]], list[dict] | None]]) -> None:
    """Refuse tool conversations (naming the first few records) when the chat template cannot render
    them: before anything is tokenized or trained."""
    tooled = [(where, tools) for where, msgs, tools in convs if uses_tools(msgs, tools)]
    if not tooled:
        return
    problem = tool_support_problem(tok, need_definitions=any(t for _, t in tooled))
    if problem is None:
        return
    shown = "\n  ".join(where for where, _ in tooled[:MAX_REPORTED])
    more = f"\n  ... and {len(tooled) - MAX_REPORTED} more" if len(tooled) > MAX_REPORTED else ""
    raise ShadowFTError(
        f"{len(tooled)} record(s) use tools, but {problem} (it would train on them without their calls):\n  "
        + shown
        + more,
        hint=TOOLS_HINT,
    )


def rendered(where: str, work: Any) -> Any:
    """`work()`, with a chat template's refusal of this record (or a span not found) as a
    `ShadowFTError` that names the record."""
    from jinja2 import TemplateError

    try:
        return work()
    except ShadowFTError as exc:
        raise ShadowFTError(f"{where}: {exc.message}", hint=exc.hint) from None
    except TemplateError as exc:
        raise ShadowFTError(
            f"{where}: the chat template refuses this conversation: {str(exc)[:300]}",
            hint="fix or remove the record (templates often require user and assistant turns to alternate)",
        ) from None


def prepare_dataset(spec: DataConfig, tokenizer_dir: Path, out_dir: Path) -> DataStats:
    """Read `spec.sources`, format and tokenize them with the chat template of `tokenizer_dir`, and
    write the dataset, tokenizer and ``stats.json`` to `out_dir` (published by an atomic rename).

    Raises `ShadowFTError` for malformed records (listing file and line of the first few), an empty
    dataset, or when every sample is too long.
    """
    from datasets import Dataset, Features, Sequence, Value

    from shadowft.modality import is_multimodal

    if is_multimodal(tokenizer_dir):  # a vision-language pair: rows may hold images, rendered by its processor
        from shadowft.vlm_data import prepare_vlm_dataset

        return prepare_vlm_dataset(spec, tokenizer_dir, out_dir)
    out_dir = Path(out_dir)
    refuse_nonempty(out_dir)
    tok = load_tokenizer(tokenizer_dir)
    input_ids, labels, per_source = tokenized_samples(spec, tok)
    dropped = sum(s.dropped for s in per_source)
    lengths = [len(x) for x in input_ids]
    stats = DataStats(
        samples=len(input_ids),
        tokens=sum(lengths),
        assistant_tokens=sum(s.assistant_tokens for s in per_source),
        dropped=dropped,
        truncated=sum(s.truncated for s in per_source),
        max_length=spec.max_length,
        overlong=spec.overlong,
        longest=max(lengths),
        mean_length=round(sum(lengths) / len(lengths), 2),
        sources=per_source,
        out_dir=str(out_dir),
        packing=spec.packing,
    )

    features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})
    held = held_out(len(input_ids), spec.validation_ratio)
    with atomic_output_dir(out_dir) as tmp:  # published by rename only when complete
        Dataset.from_dict(
            {
                "input_ids": [x for i, x in enumerate(input_ids) if i not in held],
                "labels": [x for i, x in enumerate(labels) if i not in held],
            },
            features=features,
        ).save_to_disk(str(tmp / "dataset"))
        if held:
            Dataset.from_dict(
                {"input_ids": [input_ids[i] for i in sorted(held)], "labels": [labels[i] for i in sorted(held)]},
                features=features,
            ).save_to_disk(str(tmp / VALIDATION_DIR))
        elif spec.validation_sources:
            prepare_validation(spec, tokenizer_dir, tmp / VALIDATION_DIR)
        tok.save_pretrained(str(tmp / "tokenizer"))
        # not `out_dir`: the folder is renamed (here, and again by the artifact store), so a path
        # recorded inside it would name a temporary dir that no longer exists
        on_disk = {k: v for k, v in stats.to_dict().items() if k != "out_dir"}
        (tmp / "stats.json").write_text(json.dumps(on_disk, indent=2) + "\n")
    return stats


def known_records(
    spec: DataConfig,
    problems: _Problems,
    per_source: list[Any],
    new_stats: Callable[[str], Any],
    detect: Callable[[dict[str, Any]], str | None],
    unrecognised: Callable[[dict[str, Any]], str],
    taken: Callable[[], int],
    check: Callable[[dict[str, Any]], None] | None = None,
    fixed_format: str | None = None,
) -> Iterator[tuple[int, _Record, str]]:
    """(source index, record, format) of every record of `spec.sources` in a known format, until
    `taken()` reaches data.max_samples: the reading loop every objective's data shares. Each source's
    stats (`new_stats(name)`: `rows`, `format`) go to `per_source`; rows `check` refuses (`RowRefused`)
    and rows of no format `detect` knows go to `problems`. A source's format is detected on its first
    row unless `fixed_format` gives it (a dataset_info.json#NAME source's entry does not)."""
    budget = spec.max_samples
    max_bytes = record_limit(spec)
    for si, source in enumerate(spec.sources):
        name, records = _read_source(source, spec.split, problems, max_bytes)
        st = new_stats(name)
        per_source.append(st)
        fmt = None if split_info_source(source) else fixed_format
        try:
            for rec in records:
                if budget is not None and taken() >= budget:
                    break
                st.rows += 1
                if check is not None:
                    try:
                        check(rec.data)
                    except RowRefused as exc:
                        problems.add_error(rec.where, exc)
                        continue
                if fmt is None:
                    fmt = detect(rec.data)
                    if fmt is None:
                        problems.add(rec.where, unrecognised(rec.data))
                        continue
                    st.format = fmt
                yield si, rec, fmt
        finally:
            if hasattr(records, "close"):
                records.close()


def publish_prepared(out_dir: Path, columns: dict[str, list[Any]], features: Any, tok: Any, stats: Any) -> None:
    """Write a prepared data set (dataset, tokenizer, stats.json) and publish it by an atomic rename:
    the layout `load_prepared` and the train stage read, for every objective's data."""
    from datasets import Dataset

    with atomic_output_dir(out_dir) as tmp:
        Dataset.from_dict(columns, features=features).save_to_disk(str(tmp / "dataset"))
        tok.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "stats.json").write_text(json.dumps(stats.to_dict(), indent=2) + "\n")


def with_system_prompt(msgs: list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """`msgs` with data.system_prompt first, unless they open with a system turn of their own."""
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def tokenized_samples(spec: DataConfig, tok: Any) -> tuple[list[list[int]], list[list[int]], list[SourceStats]]:
    """input_ids and labels of every kept sample, and the counts per source: everything
    `prepare_dataset` does before it writes (the data loader's fuzz target, tests/test_fuzz_data.py).
    Raises `ShadowFTError` for malformed records, an empty dataset, or when every sample is too long."""
    problems = _Problems()
    # (source index, where, messages, tools)
    conversations: list[tuple[int, str, list[dict[str, Any]], list[dict[str, Any]] | None]] = []
    per_source: list[SourceStats] = []
    max_bytes = record_limit(spec)
    for si, rec, fmt in known_records(
        spec,
        problems,
        per_source,
        lambda name: SourceStats(source=name, format=spec.format),
        detect_format,
        lambda _: (
            "unrecognised record format (expected 'messages' with role/content, "
            "'conversations' with from/value, or instruction/output)"
        ),
        taken=lambda: len(conversations),
        check=check_sft_row,
        fixed_format=None if spec.format == "auto" else spec.format,
    ):
        try:
            msgs, tools = to_conversation(rec.data, fmt)
            with_system_prompt(msgs, spec.system_prompt)
            check_conversation(msgs)
            check_size(msgs, max_bytes, tools)
        except ValueError as exc:
            problems.add_error(rec.where, exc)
            continue
        conversations.append((si, rec.where, msgs, tools))
    problems.raise_if_any()
    if not conversations:
        raise ShadowFTError(
            f"the training data is empty (sources: {', '.join(spec.sources)})",
            hint="add records to the data files or check data.sources",
        )

    check_tool_support(tok, [(where, msgs, tools) for _, where, msgs, tools in conversations])
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    for si, where, msgs, tools in conversations:
        st = per_source[si]
        ids, lab = rendered(where, lambda m=msgs, t=tools: tokenize_conversation(tok, m, spec.max_length, t))
        if len(ids) > spec.max_length:
            if spec.overlong == "drop":
                st.dropped += 1
                continue
            ids, lab = ids[: spec.max_length], lab[: spec.max_length]
            if all(x == IGNORE_INDEX for x in lab):
                st.dropped += 1  # the prompt alone fills the cutoff: nothing left to learn
                continue
            st.truncated += 1
        st.samples += 1
        st.tokens += len(ids)
        st.assistant_tokens += sum(x != IGNORE_INDEX for x in lab)
        input_ids.append(ids)
        labels.append(lab)

    dropped = sum(s.dropped for s in per_source)
    if not input_ids:
        raise ShadowFTError(
            f"all {dropped} samples are longer than data.max_length={spec.max_length} tokens "
            f"(overlong={spec.overlong})",
            hint="raise data.max_length, or set data.overlong=truncate",
        )
    return input_ids, labels, per_source


VALIDATION_DIR = "validation"


def held_out(n: int, ratio: float) -> set[int]:
    """The indices held out for validation: a seeded choice of round(n * ratio) (at least one, and at
    least one left for training), so the split does not depend on the sources' order of topics."""
    if ratio <= 0 or n < 2:
        return set()
    import random

    k = min(n - 1, max(1, round(n * ratio)))
    return set(random.Random(0).sample(range(n), k))


def prepare_validation(spec: DataConfig, tokenizer_dir: Path, out: Path) -> None:
    """`data.validation_sources`, prepared exactly as training data is, as the validation split."""
    import shutil
    import tempfile

    val_spec = spec.model_copy(
        update={"sources": spec.validation_sources, "validation_sources": [], "validation_ratio": 0.0}
    )
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        prepare_dataset(val_spec, tokenizer_dir, Path(work) / "prepared")
        shutil.move(str(Path(work) / "prepared" / "dataset"), str(out))


def load_validation(data_dir: Path):
    """The validation split of a prepared dataset, or None when it has none."""
    from datasets import load_from_disk

    path = Path(data_dir) / VALIDATION_DIR
    return load_from_disk(str(path)) if path.is_dir() else None


def load_prepared(data_dir: Path):
    """The tokenized `datasets.Dataset` of a directory written by `prepare_dataset`."""
    from datasets import load_from_disk

    data_dir = Path(data_dir)
    if not (data_dir / "stats.json").is_file() or not (data_dir / "dataset").is_dir():
        raise ShadowFTError(
            f"{data_dir} is not a prepared dataset (no stats.json / dataset/)",
            hint="create it with shadowft.data.prepare_dataset",
        )
    return load_from_disk(str(data_dir / "dataset"))


def load_stats(data_dir: Path) -> DataStats:
    return DataStats.from_dict(json.loads((Path(data_dir) / "stats.json").read_text()), out_dir=data_dir)
