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
