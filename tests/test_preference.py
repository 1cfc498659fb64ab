"""Preference data for DPO: the three row formats, rendering with the chat template, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowft.config import DataConfig
from shadowft.errors import ShadowFTError
from shadowft.preference import detect_preference_format, prepare_preferences, to_preference

SYSTEM = "Be brief."
ROWS = [("What is 2 + 3?", "5", "6"), ("Capital of France?", "Paris", "Rome")]


def _write(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _text_rows() -> list[dict]:
    return [{"system": SYSTEM, "prompt": q, "chosen": c, "rejected": r} for q, c, r in ROWS]


def _message_rows() -> list[dict]:
    return [
        {
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for q, c, r in ROWS
    ]


def _sharegpt_rows() -> list[dict]:
    return [
        {
            "system": SYSTEM,
            "conversations": [{"from": "human", "value": q}],
            "chosen": {"from": "gpt", "value": c},
            "rejected": {"from": "gpt", "value": r},
        }
        for q, c, r in ROWS
    ]


def _prepared(tmp_path: Path, instruct: Path, rows: list, name: str) -> tuple[dict, dict]:
    from datasets import load_from_disk

    src = _write(tmp_path / f"{name}.jsonl", rows)
    prepare_preferences(DataConfig(sources=[src], max_length=64), instruct, tmp_path / name)
    ds = load_from_disk(str(tmp_path / name / "dataset"))
    return ds.to_dict(), json.loads((tmp_path / name / "stats.json").read_text())


def test_three_formats_give_the_same_rendered_pairs(llama_trio, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_trio["instruct"])
    texts, kinds = [], []
    for name, rows in (("text", _text_rows()), ("messages", _message_rows()), ("sharegpt", _sharegpt_rows())):
        assert detect_preference_format(rows[0]) == name
        data, stats = _prepared(tmp_path, llama_trio["instruct"], rows, name)
        texts.append(data)
        kinds.append(stats["sources"][0]["format"])
        assert stats["kind"] == "preference" and stats["pairs"] == 2 and stats["dropped"] == 0
    assert kinds == ["text", "messages", "sharegpt"]
    assert texts[0] == texts[1] == texts[2]
    first = texts[0]
    # The prompt is Instruct's chat template up to the generation prompt; each reply ends at EOS.
    expected_prompt = tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ROWS[0][0]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert first["prompt"][0] == expected_prompt
    assert first["chosen"][0].startswith("5") and first["chosen"][0].endswith(tok.eos_token)
    assert first["rejected"][0].startswith("6") and first["rejected"][0].endswith(tok.eos_token)


def test_malformed_rows_are_reported_with_file_and_line(llama_trio, tmp_path):
    rows = [
        *_text_rows(),
        {"prompt": "ok?", "chosen": "yes", "rejected": "yes"},  # line 3: nothing to prefer
        {"prompt": "", "chosen": "a", "rejected": "b"},  # line 4: empty prompt
        {"prompt": "q", "chosen": "a"},  # line 5: no rejected
    ]
    src = _write(tmp_path / "bad.jsonl", rows)
    with open(src, "a") as f:
        f.write('{"prompt": "q", "chosen": "a", "rejected"\n')  # line 6: invalid JSON
    with pytest.raises(ShadowFTError) as err:
        prepare_preferences(DataConfig(sources=[src]), llama_trio["instruct"], tmp_path / "out")
    msg = str(err.value)
    assert "4 malformed record(s) in the preference data" in msg
    assert f"{src} line 3: chosen and rejected are the same reply" in msg
    assert f"{src} line 4: field 'prompt' is empty" in msg
    assert f"{src} line 5: missing field 'rejected'" in msg
    assert f"{src} line 6: invalid JSON" in msg
    assert "prompt/chosen/rejected" in err.value.hint
    assert not (tmp_path / "out").exists()


def test_row_level_checks_per_format():
    with pytest.raises(ValueError, match="exactly one assistant message"):
        to_preference(
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "user", "content": "a"}],
                "rejected": [],
            },
            "messages",
        )
    with pytest.raises(ValueError, match="must end with a user turn"):
        to_preference(
            {
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                "chosen": {"from": "gpt", "value": "b"},
                "rejected": {"from": "gpt", "value": "c"},
            },
            "sharegpt",
        )
    with pytest.raises(ValueError, match="assistant reply"):
        to_preference(
            {
                "conversations": [{"from": "human", "value": "q"}],
                "chosen": {"from": "human", "value": "b"},
                "rejected": {"from": "gpt", "value": "c"},
            },
            "sharegpt",
        )
    assert detect_preference_format({"messages": [{"role": "user", "content": "x"}]}) is None  # SFT data


def test_sft_rows_are_refused_as_preference_data(llama_trio, tmp_path):
    src = _write(
        tmp_path / "sft.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
    )
    with pytest.raises(ShadowFTError, match="unrecognised preference row"):
        prepare_preferences(DataConfig(sources=[src]), llama_trio["instruct"], tmp_path / "out")


def test_embedded_preference_set_teaches_a_format_instruct_lacks():
    from shadowft.zoo import corpus

    rows = corpus.preference_rows(__import__("random").Random(0), 50, corpus.eval_questions())
    for r in rows:
        prompt, chosen, rejected = to_preference(r, "messages")
        assert prompt[-1]["content"].endswith(corpus.FORMAT_INSTRUCTION)
        assert chosen == f"[{rejected}]"  # same answer: only the format is preferred
    assert all(it.answer.startswith("[") for it in corpus.format_items())


def test_hostile_rows_are_record_errors_not_tracebacks(llama_trio, tmp_path):
    """Issue 22 item 12: a role that is a list, a lone surrogate, invalid UTF-8, JSON nested 100,000
    deep, a row over data.max_record_mb: each a malformed row with its file and line."""

    def row(q="q", a="a", role="user"):
        return {
            "prompt": [{"role": role, "content": q}],
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": "b"}],
        }

    lines = [
        json.dumps(row()).encode(),
        json.dumps(row(role=["user"])).encode(),
        json.dumps(row(a="a\ud800")).encode(),
        json.dumps(row(q="caf\u00e9")).encode().replace(b"\\u00e9", b"\xe9"),
        b"[" * 100_000 + b"]" * 100_000,
        json.dumps(row(a="x" * 2000)).encode(),
    ]
    src = tmp_path / "hostile.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ShadowFTError) as err:
        prepare_preferences(DataConfig(sources=[str(src)], max_record_mb=0.001), llama_trio["instruct"], tmp_path / "o")
    msg = err.value.message
    assert "5 malformed record(s) in the preference data" in msg
    assert f"{src} line 2: prompt[0] has unknown role a list" in msg
    assert f"{src} line 3: chosen[0] (assistant) content holds a lone surrogate \\ud800 at character 2" in msg
    assert f"{src} line 4: invalid UTF-8 at byte" in msg
    assert f"{src} line 5: the record is 200,000 bytes, over data.max_record_mb=0.001" in msg
    assert f"{src} line 6: the record is" in msg
    share = _write(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": ["human"], "value": "q"}], "chosen": {"value": "a"}, "rejected": {"value": "b"}}],
    )
    with pytest.raises(ShadowFTError, match=r"s.jsonl line 1: conversations\[0\] has unknown role a list"):
        prepare_preferences(DataConfig(sources=[share]), llama_trio["instruct"], tmp_path / "o")
    assert not (tmp_path / "o").exists()
