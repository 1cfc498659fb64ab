"""The data loader as a fuzz target (issue 22): JSONL rows built by hypothesis, then mutated (fields
replaced by arbitrary JSON, bytes flipped, inserted, deleted, lines cut), read and tokenized by the
real loader with the tiny Instruct tokenizer (`shadowft.data.tokenized_samples`, everything
`prepare_dataset` does before it writes; `prepare_preferences` for DPO rows).

Every input must end in a result or a `ShadowFTError` (the CLI's `error:` + `hint:`, exit 2), never
another exception, and within a deadline. A result must account for every row (no record silently
skipped: the wrong exit 0), and rows that are valid by construction must be accepted.

Bounded for CI (about a minute: `SHADOWFT_FUZZ_EXAMPLES`, default 300 per target); run longer with
e.g. ``SHADOWFT_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_data.py -s``. Each target prints how many
inputs it tried and how they ended.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowft.config import DataConfig
from shadowft.data import IGNORE_INDEX, load_tokenizer, tokenized_samples
from shadowft.errors import ShadowFTError

EXAMPLES = int(os.environ.get("SHADOWFT_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=10_000,  # ms per input: a hang fails
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("SHADOWFT_FUZZ_RANDOM") != "1",  # CI: the same inputs every run
)

FORMATS = ["messages", "sharegpt", "alpaca"]


def files(row, max_size: int = 4):
    """Lists of rows of one format (the format is detected per file, from its first row)."""
    return st.sampled_from(FORMATS).flatmap(lambda fmt: st.lists(row(fmt), min_size=1, max_size=max_size))


# -- generators ------------------------------------------------------------------------------------

# Text as it comes: any code point except lone surrogates (those come from JSON escapes, below),
# with the characters templates and parsers care about made likely.
_pieces = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6),
    st.sampled_from(["\n", "\r", "\t", " ", "<|im_end|>", "<|im_start|>", "{{", "}}", "\\", '"', "\ue000", "\x00"]),
)
texts = st.lists(_pieces, min_size=1, max_size=6).map("".join).filter(lambda t: bool(t.strip()))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def valid_rows(draw, fmt: str) -> dict:
    """A valid row in `fmt` (messages, sharegpt or alpaca), alternating turns."""
    n = draw(st.integers(1, 3))
    pairs = [(draw(texts), draw(texts)) for _ in range(n)]
    system = draw(st.none() | texts)
    if fmt == "alpaca":
        row = {"instruction": pairs[-1][0], "output": pairs[-1][1]}
        if n > 1:
            row["history"] = [list(p) for p in pairs[:-1]]
    elif fmt == "messages":
        row = {"messages": [{"role": r, "content": c} for q, a in pairs for r, c in (("user", q), ("assistant", a))]}
    else:
        row = {"conversations": [{"from": r, "value": c} for q, a in pairs for r, c in (("human", q), ("gpt", a))]}
    if system is not None:
        row["system"] = system
    return row


def _paths(value, prefix=()):
    """Every (path to a value) in a JSON row."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_row(draw) -> dict:
    """A valid row with one value (a role, a content, a list of turns...) replaced by arbitrary JSON."""
    row = draw(valid_rows(draw(st.sampled_from(FORMATS))))
    path = draw(st.sampled_from([p for p in _paths(row) if p]))
    target = row
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(json_values | st.sampled_from(["\ud800", "robot", "", [["user"]], {"from": "gpt"}]))
    return row


def _dump(row: dict) -> bytes:
    # lone surrogates only as JSON escapes, as they arrive in real files
    return json.dumps(row).encode("utf-8", "surrogatepass").replace(b"\xed\xa0\x80", b"\\ud800")


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    """`data` with a few bytes flipped, inserted, deleted, or the file cut short."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut", "deep", "newline"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[at] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"\xff", b"\xc3", b"\\ud800", b"{"]))
        elif op == "delete" and buf:
            del buf[at : at + draw(st.integers(1, 8))]
        elif op == "cut":
            del buf[at:]
        elif op == "deep":  # a value nested far beyond the recursion limit
            depth = draw(st.sampled_from([50, 2_000, 100_000]))
            buf[at:at] = b"[" * depth + b"]" * depth
        elif op == "newline":
            buf[at:at] = b"\n"
    return bytes(buf)


# -- the oracle ------------------------------------------------------------------------------------


class Tally:
    """How the inputs of one target ended (printed at the end: the numbers docs/RELIABILITY.md reports)."""

    def __init__(self, name: str) -> None:
        self.name, self.ends = name, Counter()

    def report(self) -> str:
        total = sum(self.ends.values())
        return f"fuzz {self.name}: {total} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(self.ends.items()))


def _run_sft(tok, path: Path, tally: Tally, valid: bool, **cfg) -> None:
    spec = DataConfig(sources=[str(path)], max_samples=None, max_length=cfg.pop("max_length", 256), **cfg)
    lines = [ln for ln in path.read_bytes().split(b"\n") if ln.strip()]
    try:
        ids, labels, per_source = tokenized_samples(spec, tok)
    except ShadowFTError as exc:
        assert not valid, f"a valid file was refused: {exc}"
        assert exc.message and exc.hint is not None or "malformed" not in exc.message
        tally.ends["clean error"] += 1
        return
    (src,) = per_source
    # no row silently skipped: every non-blank line became a sample or was counted as dropped
    assert src.rows == len(lines) and src.samples + src.dropped == src.rows, (src, len(lines))
    assert len(ids) == src.samples and all(0 < len(x) <= spec.max_length for x in ids)
    assert all(any(t != IGNORE_INDEX for t in lab) for lab in labels)  # something to learn in each
    tally.ends["result"] += 1


@pytest.fixture(scope="module")
def tok(llama_trio):
    import datasets

    datasets.disable_progress_bars()  # prepare_preferences saves a dataset per input
    return load_tokenizer(llama_trio["instruct"])


@pytest.fixture(scope="module")
def tallies():
    found: dict[str, Tally] = {}
    yield found
    for t in found.values():
        print("\n" + t.report())


@pytest.fixture
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@FUZZ
@given(rows=files(valid_rows))
def test_fuzz_valid_rows_are_accepted_and_accounted(tok, tallies, work, rows):
    f = work / "valid.jsonl"
    f.write_bytes(b"\n".join(_dump(r) for r in rows) + b"\n")
    _run_sft(tok, f, tallies.setdefault("valid rows", Tally("valid rows")), valid=True)


@FUZZ
@given(rows=files(lambda fmt: valid_rows(fmt) | mutated_row()))
def test_fuzz_mutated_fields_end_in_a_result_or_a_clean_error(tok, tallies, work, rows):
    f = work / "fields.jsonl"
    f.write_bytes(b"\n".join(_dump(r) for r in rows) + b"\n")
    _run_sft(tok, f, tallies.setdefault("mutated fields", Tally("mutated fields")), valid=False)


@FUZZ
@given(data=st.data(), rows=files(valid_rows, 3), suffix=st.sampled_from(["jsonl", "json"]))
def test_fuzz_mutated_bytes_end_in_a_result_or_a_clean_error(tok, tallies, work, data, rows, suffix):
    raw = b"\n".join(_dump(r) for r in rows) + b"\n" if suffix == "jsonl" else _dump(rows)  # type: ignore[arg-type]
    f = work / f"bytes.{suffix}"
    f.write_bytes(data.draw(byte_mutations(raw)))
    tally = tallies.setdefault(f"mutated bytes ({suffix})", Tally(f"mutated bytes ({suffix})"))
    if suffix == "jsonl":
        _run_sft(tok, f, tally, valid=False, max_record_mb=0.05)
        return
    try:  # a .json array: rows are items, not lines; a result or a clean error
        ids, _, (src,) = tokenized_samples(DataConfig(sources=[str(f)], max_samples=None, max_record_mb=0.05), tok)
        assert src.samples + src.dropped == src.rows and len(ids) == src.samples
        tally.ends["result"] += 1
    except ShadowFTError:
        tally.ends["clean error"] += 1


@FUZZ
@given(
    rows=st.lists(
        st.fixed_dictionaries({"prompt": texts, "chosen": texts, "rejected": texts}).filter(
            lambda r: r["chosen"].strip() != r["rejected"].strip()
        ),
        min_size=1,
        max_size=3,
    ),
    data=st.data(),
)
@pytest.mark.slow
def test_fuzz_preference_rows_end_in_a_result_or_a_clean_error(llama_trio, tok, tallies, work, rows, data):
    from shadowft.preference import prepare_preferences

    tally = tallies.setdefault("preference rows", Tally("preference rows"))
    raw = b"\n".join(_dump(r) for r in rows) + b"\n"
    mutate = data.draw(st.booleans())
    if mutate:
        raw = data.draw(byte_mutations(raw))
    f = work / "pref.jsonl"
    f.write_bytes(raw)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    try:
        stats = prepare_preferences(DataConfig(sources=[str(f)], max_samples=None), llama_trio["instruct"], out)
    except ShadowFTError as exc:
        assert mutate, f"valid preference rows were refused: {exc}"
        tally.ends["clean error"] += 1
        return
    (src,) = stats.sources
    assert src.pairs + src.dropped == src.rows == len([ln for ln in raw.split(b"\n") if ln.strip()])
    tally.ends["result"] += 1
