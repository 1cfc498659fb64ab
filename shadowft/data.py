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
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadowft.checkpoint import atomic_output_dir
from shadowft.config import ZOO_PREFIX, DataConfig
from shadowft.errors import OutputExistsError, ShadowFTError

IGNORE_INDEX = -100
MAX_REPORTED = 8

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}
MESSAGE_ROLES = {"system", "user", "assistant"}
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
        self.what = what
        self.formats_hint = formats_hint or (
            "accepted formats: messages (role/content), sharegpt (from/value), alpaca (instruction/input/output)"
        )

    def add(self, where: str, problem: str) -> None:
        self.count += 1
        if len(self.items) < MAX_REPORTED:
            self.items.append(f"{where}: {problem}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        more = f"\n  ... and {self.count - len(self.items)} more" if self.count > len(self.items) else ""
        raise ShadowFTError(
            f"{self.count} malformed record(s) in the {self.what}:\n  " + "\n  ".join(self.items) + more,
            hint="fix or remove these records; " + self.formats_hint,
        )


# -- reading -------------------------------------------------------------------------------------


def _read_jsonl(path: Path, problems: _Problems) -> Iterator[_Record]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            text = line.rstrip("\r\n")  # the newline would move an error at the end onto the next line
            try:
                yield _Record(where, json.loads(text))
            except json.JSONDecodeError as exc:
                problems.add(where, _json_problem(exc, text))


def _json_problem(exc: json.JSONDecodeError, text: str) -> str:
    """The decoder's message with the column it stopped at; a record cut short says so."""
    if exc.pos >= len(text.rstrip()):
        return f"invalid JSON (the record ends at column {len(text.rstrip())} before it is complete: a missing `}}` or `]`?)"
    return f"invalid JSON ({exc.msg} at column {exc.colno})"


def _read_json(path: Path, problems: _Problems) -> Iterator[_Record]:
    """A JSON array of records (or {"data": [...]}); each record is reported by the line it starts on."""
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.add(f"{path} line {exc.lineno}", f"invalid JSON ({exc.msg} at column {exc.colno})")
        return
    if isinstance(whole, dict) and isinstance(whole.get("data"), list) and len(whole) == 1:
        yield from (_Record(f"{path} item {i + 1}", r) for i, r in enumerate(whole["data"]))
        return
    if not isinstance(whole, list):
        problems.add(f"{path} line 1", "a .json file must hold a list of records (or use .jsonl)")
        return
    # Walk the array again with raw_decode to learn the line each element starts on.
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    for item in whole:
        while text[pos] in " \t\r\n,":
            pos += 1
        _, end = dec.raw_decode(text, pos)
        yield _Record(f"{path} line {text.count(chr(10), 0, pos) + 1}", item)
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


def _read_hub(name: str, split: str, problems: _Problems) -> Iterator[_Record]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
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
    return not ref.startswith(ZOO_PREFIX) and (
        ref.startswith((".", "/", "~")) or ref.count("/") > 1 or Path(ref).suffix.lower() in LOCAL_SUFFIXES
    )


def check_sources_exist(sources: list[str]) -> None:
    """Fail in milliseconds on a local data file that is not there (before any model is loaded)."""
    for source in sources:
        if looks_local(source) and not Path(source).expanduser().exists():
            raise ShadowFTError(
                f"data source {source!r} does not exist",
                hint=f"check the path (relative paths are read from {Path.cwd()}); local sources are "
                ".jsonl, .json or .parquet files, anything else is read as a `datasets` name",
            )


def _read_source(source: str, split: str, problems: _Problems) -> tuple[str, Iterator[_Record]]:
    if source.startswith(ZOO_PREFIX):
        raise ShadowFTError(
            f"data source {source!r} is a placeholder",
            hint="resolve placeholders with RunConfig.resolve(...) before preparing data",
        )
    path = Path(source).expanduser()
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if path.is_dir():  # a dataset repo snapshot or a folder of data files: `datasets` reads it
        return str(path), _read_hub(str(path), split, problems)
    if path.exists():
        if kind is None:
            raise ShadowFTError(
                f"data source {source}: unsupported file type", hint="use .jsonl, .json or .parquet files"
            )
        reader = {"jsonl": _read_jsonl, "json": _read_json, "parquet": _read_parquet}[kind]
        return str(path), reader(path, problems)
    if kind is not None or source.startswith((".", "/", "~")):
        raise ShadowFTError(f"data file {source} does not exist", hint="check data.sources in the config")
    return source, _read_hub(source, split, problems)


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


def to_messages(record: Any, fmt: str) -> list[dict[str, str]]:
    """Convert one record to [{'role', 'content'}] in `fmt`; raises ValueError naming the problem."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")  # noqa: TRY004 (caught as a record problem)
    if fmt == "alpaca":
        return _alpaca(record)
    key = next((k for k in ("messages", "conversations", "conversation") if k in record), None)
    if key is None:
        raise ValueError(f"missing field 'messages' or 'conversations' ({fmt} format)")
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"field {key!r} must be a non-empty list of turns")
    msgs: list[dict[str, str]] = []
    system = record.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"{key}[{i}] is not an object")  # noqa: TRY004
        if fmt == "sharegpt":
            if "from" not in turn or "value" not in turn:
                raise ValueError(f"{key}[{i}] missing field 'from' or 'value' (sharegpt format)")
            raw_role, content = turn["from"], turn["value"]
            role = SHAREGPT_ROLES.get(str(raw_role).lower()) if isinstance(raw_role, str) else None
        else:
            if "role" not in turn or "content" not in turn:
                raise ValueError(f"{key}[{i}] missing field 'role' or 'content' (messages format)")
            raw_role, content = turn["role"], turn["content"]
            role = raw_role if raw_role in MESSAGE_ROLES else None
        if role is None:
            allowed = sorted(SHAREGPT_ROLES) if fmt == "sharegpt" else sorted(MESSAGE_ROLES)
            raise ValueError(f"{key}[{i}] has unknown role {raw_role!r} (allowed: {', '.join(allowed)})")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{key}[{i}] ({role}) has empty or non-text content")
        msgs.append({"role": role, "content": content})
    return msgs


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
    for j, pair in enumerate(record.get("history") or []):
        if not (
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)
        ):
            raise ValueError(f"history[{j}] must be a [question, answer] pair of non-empty texts")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = record["instruction"] if not extra.strip() else f"{record['instruction']}\n\n{extra}"
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    return msgs


def check_conversation(msgs: list[dict[str, str]]) -> None:
    """Structural checks: system only first, a user turn before the first answer, ends with an answer."""
    for i, m in enumerate(msgs):
        if m["role"] == "system" and i != 0:
            raise ValueError(f"turn {i}: a system message may only come first")
    roles = [m["role"] for m in msgs if m["role"] != "system"]
    if "assistant" not in roles:
        raise ValueError("no assistant turn (nothing to learn)")
    if roles[0] != "user":
        raise ValueError("the conversation must start with a user turn (after an optional system message)")
    if roles[-1] != "assistant":
        raise ValueError("the conversation must end with an assistant turn")


# -- tokenization --------------------------------------------------------------------------------


def _render(tokenizer, msgs: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, msgs: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant answer (content plus the
    template's end-of-turn marker, e.g. ``<|im_end|>``) by prefix rendering."""
    full = _render(tokenizer, msgs)
    eos = tokenizer.eos_token or ""
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, msgs[:i], add_generation_prompt=True)
        if not full.startswith(prompt):
            raise ShadowFTError(
                "the chat template renders a conversation prefix differently from the full conversation; "
                "cannot locate the assistant turns",
                hint="use a template whose rendering of messages[:i] with add_generation_prompt=True is a "
                "prefix of the full conversation",
            )
        start = len(prompt)
        upto = _render(tokenizer, msgs[: i + 1])
        if full.startswith(upto) and len(upto) > start:
            end = len(upto)
        else:
            # Earlier turns rendered differently when they are not last (e.g. Qwen3 drops think blocks):
            # find the content after the prompt and extend over the end-of-turn token.
            at = full.find(m["content"], start)
            if at < 0:
                raise ShadowFTError(
                    f"cannot find assistant turn {i} in the rendered conversation",
                    hint="the chat template rewrites assistant content; prepare this data with a simpler template",
                )
            end = at + len(m["content"])
            if eos and full.startswith(eos, end):
                end += len(eos)
        # Do not train on whitespace the template puts after the end-of-turn token.
        while end > start and full[end - 1] in " \t\r\n" and eos and full[:end].rstrip().endswith(eos):
            end -= 1
        spans.append((start, end))
    return full, spans


def tokenize_conversation(tokenizer, msgs: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 outside assistant answers) for one conversation."""
    full, spans = assistant_char_spans(tokenizer, msgs)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for t, (a, b) in enumerate(enc["offset_mapping"]):
        while k < len(spans) and spans[k][1] <= a:
            k += 1
        if k < len(spans) and b > a and spans[k][0] <= a < spans[k][1]:
            labels[t] = ids[t]
    return ids, labels


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


def prepare_dataset(spec: DataConfig, tokenizer_dir: Path, out_dir: Path) -> DataStats:
    """Read `spec.sources`, format and tokenize them with the chat template of `tokenizer_dir`, and
    write the dataset, tokenizer and ``stats.json`` to `out_dir` (published by an atomic rename).

    Raises `ShadowFTError` for malformed records (listing file and line of the first few), an empty
    dataset, or when every sample is too long.
    """
    from datasets import Dataset, Features, Sequence, Value

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputExistsError(f"output directory {out_dir} exists and is not empty", hint="choose a new directory")
    tok = load_tokenizer(tokenizer_dir)

    problems = _Problems()
    conversations: list[tuple[int, list[dict[str, str]]]] = []  # (source index, messages)
    per_source: list[SourceStats] = []
    budget = spec.max_samples
    for si, source in enumerate(spec.sources):
        name, records = _read_source(source, spec.split, problems)
        st = SourceStats(source=name, format=spec.format)
        per_source.append(st)
        fmt: str | None = None if spec.format == "auto" else spec.format
        for rec in records:
            if budget is not None and len(conversations) >= budget:
                break
            st.rows += 1
            if fmt is None:
                fmt = detect_format(rec.data)
                if fmt is None:
                    problems.add(
                        rec.where,
                        "unrecognised record format (expected 'messages' with role/content, "
                        "'conversations' with from/value, or instruction/output)",
                    )
                    continue
                st.format = fmt
            try:
                msgs = to_messages(rec.data, fmt)
                if spec.system_prompt and msgs[0]["role"] != "system":
                    msgs.insert(0, {"role": "system", "content": spec.system_prompt})
                check_conversation(msgs)
            except ValueError as exc:
                problems.add(rec.where, str(exc))
                continue
            conversations.append((si, msgs))
        if hasattr(records, "close"):
            records.close()
    problems.raise_if_any()
    if not conversations:
        raise ShadowFTError(
            f"the training data is empty (sources: {', '.join(spec.sources)})",
            hint="add records to the data files or check data.sources",
        )

    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    for si, msgs in conversations:
        st = per_source[si]
        ids, lab = tokenize_conversation(tok, msgs)
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
