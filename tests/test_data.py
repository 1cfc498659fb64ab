"""Dataset preparation on the tiny Instruct tokenizer: formats, label masking, errors with file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shadowft.config import DataConfig
from shadowft.data import (
    IGNORE_INDEX,
    load_prepared,
    load_stats,
    load_tokenizer,
    prepare_dataset,
    tokenize_conversation,
)
from shadowft.errors import OutputExistsError, ShadowFTError

# A Qwen3-style template: only assistant turns after the last user turn get an (empty) think block, so
# rendering messages[:i+1] is not a prefix of the full conversation for earlier answers.
QWEN3_LIKE = (
    "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' and loop.index0 > ns.last_query -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for i, text in (raw_lines or {}).items():
        lines.insert(i, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def msg_row(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def answer_text(tok, ids, labels) -> list[str]:
    """The labelled stretches of a sample, decoded."""
    out, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    if cur:
        out.append(tok.decode(cur))
    return out


@pytest.fixture(scope="module")
def tok_dir(llama_trio):
    return llama_trio["instruct"]


def test_formats_detected_and_labels_masked(tmp_path, tok_dir):
    import pandas as pd

    src = tmp_path / "src"
    src.mkdir()
    m = write_jsonl(src / "m.jsonl", [msg_row("what is 1 + 2?", "3"), msg_row("is 7 > 3?", "true")])
    s = write_jsonl(
        src / "s.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "2 + 2?"},
                    {"from": "gpt", "value": "4"},
                    {"from": "human", "value": "and 3 + 3?"},
                    {"from": "gpt", "value": "6"},
                ]
            }
        ],
    )
    a = src / "a.json"
    a.write_text(
        json.dumps(
            [{"instruction": "add", "input": "5 + 5", "output": "10"}, {"instruction": "say hi", "output": "hi"}],
            indent=2,
        )
    )
    p = src / "p.parquet"
    pd.DataFrame([{"instruction": "double 4", "input": "", "output": "8"}]).to_parquet(p)

    out = tmp_path / "prepared"
    stats = prepare_dataset(DataConfig(sources=[str(m), str(s), str(a), str(p)], max_length=128), tok_dir, out)
    assert stats.samples == 6 and stats.dropped == 0 and stats.truncated == 0
    assert [x.format for x in stats.sources] == ["messages", "sharegpt", "alpaca", "alpaca"]
    assert [x.samples for x in stats.sources] == [2, 1, 2, 1]
    assert load_stats(out).to_dict() == stats.to_dict()
    assert "out_dir" not in json.loads((out / "stats.json").read_text())  # it would name the renamed temp dir
    assert json.loads((out / "stats.json").read_text())["assistant_tokens"] == stats.assistant_tokens

    ds = load_prepared(out)
    assert ds.column_names == ["input_ids", "labels"] and len(ds) == 6
    tok = load_tokenizer(out / "tokenizer")
    answers = [answer_text(tok, r["input_ids"], r["labels"]) for r in ds]
    assert answers[0] == ["3<|im_end|>"] and answers[1] == ["true<|im_end|>"]
    assert answers[2] == ["4<|im_end|>", "6<|im_end|>"]  # both turns of a multi-turn conversation
    assert answers[3] == ["10<|im_end|>"] and answers[5] == ["8<|im_end|>"]
    text = tok.decode(ds[2]["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "<|im_start|>user\n2 + 2?" in text
    assert "add\n\n5 + 5" in tok.decode(ds[3]["input_ids"])  # alpaca instruction + input
    assert stats.tokens == sum(len(r["input_ids"]) for r in ds)
    assert stats.assistant_tokens == sum(sum(x != IGNORE_INDEX for x in r["labels"]) for r in ds)
    assert not list(tmp_path.glob(".prepared.tmp-*"))


def test_qwen3_style_template_multi_turn(tmp_path, tok_dir):
    tok = load_tokenizer(tok_dir)
    tok.chat_template = QWEN3_LIKE
    msgs = [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3 + 3?"},
        {"role": "assistant", "content": "6"},
    ]
    ids, labels = tokenize_conversation(tok, msgs)
    assert answer_text(tok, ids, labels) == ["4<|im_end|>", "<think>\n\n</think>\n\n6<|im_end|>"]


def test_system_prompt_and_max_samples(tmp_path, tok_dir):
    f = write_jsonl(tmp_path / "d.jsonl", [msg_row(f"q{i}", f"a{i}") for i in range(5)])
    stats = prepare_dataset(
        DataConfig(sources=[str(f)], max_length=64, max_samples=3, system_prompt="You are terse."),
        tok_dir,
        tmp_path / "out",
    )
    assert stats.samples == 3 and stats.sources[0].rows == 3
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert tok.decode(load_prepared(tmp_path / "out")[0]["input_ids"]).startswith("<|im_start|>system\nYou are terse.")


def test_malformed_rows_name_file_and_line(tmp_path, tok_dir):
    good = msg_row("1 + 1?", "2")
    rows = [
        good,  # line 1
        {"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]},  # line 2
        good,  # line 4 (3 is bad JSON)
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]},  # line 5
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]},  # line 6
        {"messages": [{"role": "user", "content": "only a question"}]},  # line 7
    ]
    f = write_jsonl(tmp_path / "bad.jsonl", rows, raw_lines={2: '{"messages": [ oops'})
    with pytest.raises(ShadowFTError) as ei:
        prepare_dataset(DataConfig(sources=[str(f)]), tok_dir, tmp_path / "out")
    msg = ei.value.message
    assert "5 malformed record(s)" in msg
    assert f"{f} line 2: messages[1] has unknown role 'robot'" in msg
    assert f"{f} line 3: invalid JSON" in msg
    assert f"{f} line 5: messages[1] (assistant) has empty or non-text content" in msg
    assert f"{f} line 6: messages[1] missing field 'role' or 'content'" in msg
    assert f"{f} line 7: no assistant turn" in msg
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_record_missing_its_closing_brackets_is_reported_at_its_end(tmp_path, tok_dir):
    """Not "column 1" (the decoder's position after the newline): the record is cut short, said so."""
    f = tmp_path / "cut.jsonl"
    f.write_text(json.dumps(msg_row("a", "b")) + "\n" + '{"messages": [{"role": "user", "content": "x"}\n')
    with pytest.raises(ShadowFTError) as ei:
        prepare_dataset(DataConfig(sources=[str(f)]), tok_dir, tmp_path / "out")
    assert f"{f} line 2: invalid JSON (the record ends at column 46 before it is complete" in ei.value.message


def test_json_array_and_sharegpt_errors_report_lines(tmp_path, tok_dir):
    f = tmp_path / "a.json"
    f.write_text(
        '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"},\n'
        '  {"instruction": "d",\n   "output": ""}\n]\n'
    )
    with pytest.raises(ShadowFTError) as ei:
        prepare_dataset(DataConfig(sources=[str(f)]), tok_dir, tmp_path / "out")
    assert f"{f} line 3: missing field 'output' (alpaca format)" in ei.value.message
    assert f"{f} line 4: field 'output' is empty" in ei.value.message

    s = write_jsonl(
        tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "q"}, {"from": "tool", "value": "r"}]}]
    )
    with pytest.raises(ShadowFTError, match=r"s.jsonl line 1: conversations\[1\] has unknown role 'tool'"):
        prepare_dataset(DataConfig(sources=[str(s)], format="sharegpt"), tok_dir, tmp_path / "out")

    u = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(ShadowFTError, match="u.jsonl line 1: unrecognised record format"):
        prepare_dataset(DataConfig(sources=[str(u)]), tok_dir, tmp_path / "out")


def test_overlong_truncate_and_drop(tmp_path, tok_dir):
    long_answer = " ".join(["the quick brown fox"] * 30)
    f = write_jsonl(tmp_path / "d.jsonl", [msg_row("short?", "yes"), msg_row("long?", long_answer)])
    t = prepare_dataset(DataConfig(sources=[str(f)], max_length=40, overlong="truncate"), tok_dir, tmp_path / "t")
    assert (t.samples, t.truncated, t.dropped, t.longest) == (2, 1, 0, 40)
    d = prepare_dataset(DataConfig(sources=[str(f)], max_length=40, overlong="drop"), tok_dir, tmp_path / "d")
    assert (d.samples, d.truncated, d.dropped) == (1, 0, 1) and d.sources[0].dropped == 1

    with pytest.raises(ShadowFTError) as ei:
        prepare_dataset(DataConfig(sources=[str(f)], max_length=8, overlong="drop"), tok_dir, tmp_path / "x")
    assert "all 2 samples are longer than data.max_length=8" in ei.value.message
    assert "max_length" in ei.value.hint


def test_empty_missing_and_existing_output(tmp_path, tok_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ShadowFTError, match="training data is empty") as ei:
        prepare_dataset(DataConfig(sources=[str(empty)]), tok_dir, tmp_path / "o")
    assert ei.value.hint
    with pytest.raises(ShadowFTError, match="does not exist"):
        prepare_dataset(DataConfig(sources=[str(tmp_path / "nope.jsonl")]), tok_dir, tmp_path / "o")
    with pytest.raises(ShadowFTError, match="cannot load data source 'someorg/somedata'"):
        prepare_dataset(DataConfig(sources=["someorg/somedata"]), tok_dir, tmp_path / "o")  # offline in tests
    with pytest.raises(ShadowFTError, match="placeholder"):
        prepare_dataset(DataConfig(sources=["zoo:train"]), tok_dir, tmp_path / "o")

    f = write_jsonl(tmp_path / "d.jsonl", [msg_row("q", "a")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputExistsError):
        prepare_dataset(DataConfig(sources=[str(f)]), tok_dir, tmp_path / "full")
    (tmp_path / "emptydir").mkdir()  # an existing empty dir is fine (replaced atomically)
    assert prepare_dataset(DataConfig(sources=[str(f)]), tok_dir, tmp_path / "emptydir").samples == 1


def test_tokenizer_without_chat_template_is_refused(tmp_path, tok_dir):
    plain = tmp_path / "tok"
    shutil.copytree(tok_dir, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    f = write_jsonl(tmp_path / "d.jsonl", [msg_row("q", "a")])
    with pytest.raises(ShadowFTError, match="no chat template"):
        prepare_dataset(DataConfig(sources=[str(f)]), plain, tmp_path / "o")


def test_a_dataset_folder_is_read_with_datasets(tmp_path, tok_dir):
    import pandas as pd

    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    pd.DataFrame([msg_row("q1", "a1"), msg_row("q2", "a2")]).to_parquet(folder / "train-00000.parquet")
    stats = prepare_dataset(DataConfig(sources=[str(tmp_path / "repo")], split="train"), tok_dir, tmp_path / "o")
    assert stats.samples == 2 and stats.sources[0].format == "messages"


# -- hostile input (issue 22, items 9 and 12) -----------------------------------------------------


def _refusal(tmp_path: Path, tok_dir: Path, f: Path, **cfg) -> str:
    """The ShadowFTError message of preparing `f` (nothing may be written)."""
    with pytest.raises(ShadowFTError) as ei:
        prepare_dataset(DataConfig(sources=[str(f)], **cfg), tok_dir, tmp_path / "out")
    assert ei.value.hint
    assert not (tmp_path / "out").exists()
    return ei.value.message


def test_invalid_utf8_is_reported_with_file_and_line(tmp_path, tok_dir):
    good = json.dumps(msg_row("1 + 1?", "2")).encode()
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(good + b"\n" + json.dumps(msg_row("caf\u00e9?", "yes")).encode().replace(b"\\u00e9", b"\xe9") + b"\n")
    msg = _refusal(tmp_path, tok_dir, f)
    assert f"{f} line 2: invalid UTF-8 at byte 47 of the line (e9 " in msg and "1 malformed record(s)" in msg
    arr = tmp_path / "latin1.json"
    arr.write_bytes(b'[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "caf\xe9", "output": "b"}\n]\n')
    assert f"{arr} line 3: invalid UTF-8 at byte 23 of the line" in _refusal(tmp_path, tok_dir, arr)


def test_role_that_is_a_list_is_a_record_error(tmp_path, tok_dir):
    rows = [
        msg_row("q", "a"),
        {"messages": [{"role": ["user"], "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"conversations": [{"from": {"a": 1}, "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"instruction": "q", "output": "a", "history": 7},
    ]
    f = write_jsonl(tmp_path / "roles.jsonl", rows[:2])
    assert f"{f} line 2: messages[0] has unknown role a list (allowed: assistant, system, tool, user)" in _refusal(
        tmp_path, tok_dir, f
    )
    s = write_jsonl(tmp_path / "s.jsonl", [rows[2]])
    assert f"{s} line 1: conversations[0] has unknown role a dict" in _refusal(tmp_path, tok_dir, s)
    a = write_jsonl(tmp_path / "a.jsonl", [rows[3]])
    assert f"{a} line 1: field 'history' must be a list" in _refusal(tmp_path, tok_dir, a)


def test_lone_surrogate_is_refused_with_file_and_line(tmp_path, tok_dir):
    f = tmp_path / "sur.jsonl"
    f.write_text(
        json.dumps(msg_row("q", "a")) + "\n" + json.dumps(msg_row("q", "a")).replace('"a"', '"a\\ud800b"') + "\n"
    )
    msg = _refusal(tmp_path, tok_dir, f)
    assert f"{f} line 2: messages[1] (assistant) content holds a lone surrogate \\ud800 at character 2" in msg
    sysf = tmp_path / "sys.jsonl"
    sysf.write_text('{"system": "\\udfff", "instruction": "q", "output": "a"}\n')
    assert f"{sysf} line 1: field 'system' holds a lone surrogate" in _refusal(tmp_path, tok_dir, sysf)


def test_json_nested_100000_deep_is_a_record_error(tmp_path, tok_dir):
    deep = "[" * 100_000 + "]" * 100_000
    f = tmp_path / "deep.jsonl"
    f.write_text(json.dumps(msg_row("q", "a")) + "\n" + deep + "\n" + '{"messages": ' + deep + "}\n")
    msg = _refusal(tmp_path, tok_dir, f)
    assert f"{f} line 2: invalid JSON (nested too deeply)" in msg and f"{f} line 3: invalid JSON (nested" in msg
    arr = tmp_path / "deep.json"
    arr.write_text(deep)
    assert f"{arr} line 1: invalid JSON (nested too deeply)" in _refusal(tmp_path, tok_dir, arr)


def test_record_over_the_size_limit_is_refused_before_it_is_read_whole(tmp_path, tok_dir):
    big = json.dumps(msg_row("q", "x " * 30_000))  # 60 kB
    f = tmp_path / "big.jsonl"
    f.write_text(json.dumps(msg_row("q", "a")) + "\n" + big + "\n" + json.dumps(msg_row("q", "a")) + "\n")
    msg = _refusal(tmp_path, tok_dir, f, max_record_mb=0.05)
    assert f"{f} line 2: the record is {len(big):,} bytes, over data.max_record_mb=0.05 (50,000 bytes)" in msg
    assert "line 3" not in msg  # the rest of the long line is skipped, the next line read as line 3
    ok = prepare_dataset(DataConfig(sources=[str(f)], max_record_mb=0.1), tok_dir, tmp_path / "ok")
    assert ok.samples == 3
    arr = tmp_path / "big.json"
    arr.write_text("[\n" + json.dumps(msg_row("q", "a")) + ",\n" + big + "\n]\n")
    assert f"{arr} line 3: the record is" in _refusal(tmp_path, tok_dir, arr, max_record_mb=0.05)


_BIG_LINE = """
import json, sys
from pathlib import Path
from shadowft.config import DataConfig
from shadowft.data import prepare_dataset
from shadowft.errors import ShadowFTError
f = Path(sys.argv[2])
with f.open("w") as fh:  # one 50 MB record, as in the probe
    fh.write('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "')
    for _ in range(50):
        fh.write("word " * 200_000)
    fh.write('"}]}\\n')
try:
    prepare_dataset(DataConfig(sources=[str(f)]), Path(sys.argv[1]), f.parent / "out")
except ShadowFTError as exc:
    print(exc.message)
# VmHWM, this process's own peak: ru_maxrss also counts the parent's peak at fork (Linux keeps
# it across exec), so a test run that had grown pytest to 3 GB failed here with the line never read
hwm_kb = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print("maxrss_mb", hwm_kb // 1024)
"""


@pytest.mark.slow
def test_a_50_mb_record_is_refused_by_default_in_bounded_memory(tmp_path, tok_dir):
    """Issue 22 item 9: a 50 MB JSONL line was tokenized whole and the process died at 9.5 GB."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", _BIG_LINE, str(tok_dir), str(tmp_path / "big.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{tmp_path / 'big.jsonl'} line 1: the record is 50,000,086 bytes, over data.max_record_mb=16" in r.stdout
    assert int(r.stdout.split("maxrss_mb")[1]) < 1500, r.stdout  # the line is never held whole


def test_a_long_sample_is_cut_before_it_is_tokenized_with_the_same_tokens(tok_dir, monkeypatch):
    tok = load_tokenizer(tok_dir)
    msgs = [
        {"role": "user", "content": "tell me a long story"},
        {"role": "assistant", "content": "once upon a time " * 20_000},
    ]
    whole_ids, whole_labels = tokenize_conversation(tok, msgs)
    seen: list[int] = []
    real = type(tok).__call__

    def spy(self, text, *a, **kw):
        seen.append(len(text))
        return real(self, text, *a, **kw)

    monkeypatch.setattr(type(tok), "__call__", spy)
    ids, labels = tokenize_conversation(tok, msgs, max_length=256)
    assert (ids, labels) == (whole_ids[:257], whole_labels[:257])  # one over: the caller sees it is overlong
    assert seen and max(seen) <= 16 * 256 < len(msgs[1]["content"])  # the 340 kB rendering was cut first


def _conversation(n: int, system: bool = True) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": "Be brief."}] if system else []
    for i in range(n // 2):
        msgs += [
            {"role": "user", "content": f"question {i}: what is {i} + {i}?"},
            {"role": "assistant", "content": f"{2 * i}" if i % 3 else f"it is {2 * i}.\n"},
        ]
    return msgs


# Gemma's shape: the system message merged into the first user turn, contents trimmed, alternation enforced.
GEMMA_LIKE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for m in loop_messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' + (prefix if loop.first else '')"
    " + m['content'] | trim + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", ["chatml", "qwen3-like", "gemma-like", "numbered"])
def test_long_conversations_find_the_spans_of_every_prefix_from_windows(tok_dir, template):
    from shadowft.data import _exact_spans, _render, _windowed_spans, assistant_char_spans

    tok = load_tokenizer(tok_dir)
    if template == "qwen3-like":
        tok.chat_template = QWEN3_LIKE
    elif template == "gemma-like":
        tok.chat_template = GEMMA_LIKE
    elif template == "numbered":  # depends on every earlier message: windows cannot stand in for it
        tok.chat_template = (
            "{% for m in messages %}{{ loop.index ~ ' ' ~ m.role ~ ': ' ~ m.content ~ '<|im_end|>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ (messages | length + 1) ~ ' assistant: ' }}{% endif %}"
        )
    stripped = [{**m, "content": m["content"].strip()} for m in _conversation(60)]
    for msgs in (_conversation(60), _conversation(61, system=False)[:-1], stripped):
        full = _render(tok, msgs)
        exact = _exact_spans(tok, msgs, full)
        windowed = _windowed_spans(tok, msgs, full)
        trims = template == "gemma-like" and any(m["content"] != m["content"].strip() for m in msgs)
        assert (windowed is None) == (template == "numbered" or trims)  # a template that changes contents: exact
        assert assistant_char_spans(tok, msgs) == (full, windowed or exact)
        assert windowed is None or windowed == exact


def test_a_1500_turn_conversation_is_prepared_in_linear_time(tok_dir, monkeypatch):
    """Issue 22 item 9: each assistant turn rendered its whole prefix (13.5 s for 1,500 turns)."""
    import time

    tok = load_tokenizer(tok_dir)
    rendered: list[int] = []
    real = type(tok).apply_chat_template

    def count(self, conversation, *a, **kw):
        rendered.append(len(conversation))
        return real(self, conversation, *a, **kw)

    monkeypatch.setattr(type(tok), "apply_chat_template", count)
    msgs = _conversation(1500)
    t0 = time.perf_counter()
    ids, labels = tokenize_conversation(tok, msgs)
    took = time.perf_counter() - t0
    assert sum(x != IGNORE_INDEX for x in labels) > 1500
    assert sum(rendered) < 10 * len(msgs), sum(rendered)  # messages rendered: linear (was ~n^2 / 2 = 1.1 M)
    assert took < 5, took


def test_a_chat_template_that_refuses_a_record_names_it(tmp_path, tok_dir):
    from shadowft.data import tokenized_samples

    tok = load_tokenizer(tok_dir)
    tok.chat_template = GEMMA_LIKE  # raise_exception unless user and assistant alternate
    two_users = {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}]}
    two_users["messages"].append({"role": "assistant", "content": "a"})
    f = write_jsonl(tmp_path / "alt.jsonl", [msg_row("q", "a"), two_users])
    with pytest.raises(ShadowFTError) as ei:
        tokenized_samples(DataConfig(sources=[str(f)]), tok)
    assert f"{f} line 2: the chat template refuses this conversation: Conversation roles must alternate" in str(
        ei.value
    )
    assert "alternate" in (ei.value.hint or "")
