"""Data as LLaMA-Factory / TRL users bring it (issue 25): tool calling, dataset_info.json, content parts,
and the refusals of rows a text-only SFT / DPO run must not train on. The example files are the README's
(examples/data/); masks are checked on the embedded family's template and on SmolLM2's real one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shadowft.config import DataConfig
from shadowft.data import IGNORE_INDEX, load_tokenizer, prepare_dataset, tokenized_samples
from shadowft.errors import ShadowFTError

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
INFO = DATA / "dataset_info.json"
TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"


def labelled(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The trained stretches of a sample, decoded."""
    out, cur = [], []
    for i, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out + ([tok.decode(cur)] if cur else [])


def trained(tok, source: str, **kw) -> list[list[str]]:
    ids, labels, _ = tokenized_samples(DataConfig(sources=[source], max_length=2048, **kw), tok)
    return [labelled(tok, i, lab) for i, lab in zip(ids, labels, strict=True)]


def embedded_call(name: str, args: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call><|im_end|>"


def qwen25_call(name: str, args: dict) -> str:
    return '<tool_call>\n{"name": "' + name + '", "arguments": ' + json.dumps(args) + "}\n</tool_call><|im_end|>"


WEATHER = {"city": "Lyon"}
LENGTH = {"value": 3, "from_unit": "km", "to_unit": "mi"}

# What each example file trains, per conversation: the assistant's turns (function calls included), each
# with its end-of-turn token; nothing of the prompts, tool results or tool definitions.
PLAIN = {
    "alpaca.json": [["100 C<|im_end|>"], ["Stockholm<|im_end|>", "Oslo<|im_end|>"]],
    "sharegpt.jsonl": [["Blue.<|im_end|>", "Orange and red.<|im_end|>"], ["tac<|im_end|>"]],
    "messages.jsonl": [["Eight.<|im_end|>"], ["Jupiter.<|im_end|>"]],
    "dataset_info.json#qa_alpaca": [["100 C<|im_end|>"], ["Oslo<|im_end|>"]],  # history: not a declared column
    "dataset_info.json#chat_sharegpt": [["Blue.<|im_end|>", "Orange and red.<|im_end|>"], ["tac<|im_end|>"]],
    "dataset_info.json#bakery_chat": [["No, it opens Monday to Saturday.<|im_end|>"]],
}


def tool_expectations(call) -> dict[str, list[list[str]]]:
    weather = [call("get_weather", WEATHER), "It is sunny in Lyon, 21 C.<|im_end|>"]
    length = [call("convert_length", LENGTH), "3 km is about 1.86 miles.<|im_end|>"]
    return {
        "tools_messages.jsonl": [weather, ["Hello! Ask me about the weather.<|im_end|>"]],
        "tools_sharegpt.json": [length],
        "dataset_info.json#tools_sharegpt": [length],
    }


@pytest.fixture(scope="module")
def embedded(zoo_family):
    return load_tokenizer(zoo_family.instruct)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_tokenizer(smollm2_dir)


@pytest.mark.parametrize("name", ["embedded", "smollm2"])
def test_every_format_trains_exactly_the_assistants_tokens(name, request):
    tok = request.getfixturevalue(name)
    cases = dict(PLAIN)
    if name == "embedded":
        cases |= tool_expectations(embedded_call)
    for source, want in cases.items():
        assert trained(tok, str(DATA / source)) == want, source


def test_tool_conversations_on_a_real_published_tools_template(smollm2_dir, tmp_path):
    """SmolLM2's own template cannot render tools: refused. With Qwen2.5's published template (same ChatML
    tokens) the calls are trained, the tool results and definitions are not."""
    tok = load_tokenizer(smollm2_dir)
    with pytest.raises(ShadowFTError) as ei:
        trained(tok, str(DATA / "tools_messages.jsonl"))
    assert "2 record(s) use tools, but its chat template does not render function calls" in ei.value.message
    assert f"{DATA / 'tools_messages.jsonl'} line 1" in ei.value.message
    assert "supports tools" in (ei.value.hint or "")
    tok.chat_template = (TRL_TEMPLATES / "qwen2_5.jinja").read_text()
    for source, want in tool_expectations(qwen25_call).items():
        assert trained(tok, str(DATA / source)) == want, source
    text = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    assert "<tools>" not in text  # no tools: the definitions appear only with rows that have them


def test_the_embedded_template_is_chatml_byte_for_byte_without_tools(zoo_family):
    """Adding tools to the family's template left every rendering without tools as it was (the family's
    data, its suites' prompts), and the toy-tools suite's system prompt is what the template renders."""
    from shadowft.evaluate.suites import TOY_TOOLS_SYSTEM_PROMPT, resolve_suites
    from shadowft.tiny import build_tokenizer
    from shadowft.zoo import corpus, tools

    old, new = build_tokenizer(), load_tokenizer(zoo_family.instruct)
    assert new.chat_template == tools.TOOL_CHAT_TEMPLATE
    rows = (
        corpus.read_jsonl(zoo_family.data / "general.jsonl")[:50]
        + corpus.read_jsonl(zoo_family.data / "domain.jsonl")[:50]
    )
    convs = [r["messages"] for r in rows] + [
        r["prompt"] for r in corpus.read_jsonl(zoo_family.data / "preference.jsonl")[:20]
    ]
    convs.append([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])  # no system turn
    for msgs in convs:
        for gen in (False, True):
            a = old.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            assert new.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == a
    system = [{"role": "system", "content": corpus.SYSTEM_PROMPT}, {"role": "user", "content": "q"}]
    with_tools = new.apply_chat_template(system, tools=tools.TOOLS, tokenize=False)
    as_suite = new.apply_chat_template([{**system[0], "content": TOY_TOOLS_SYSTEM_PROMPT}, system[1]], tokenize=False)
    assert with_tools == as_suite and TOY_TOOLS_SYSTEM_PROMPT == tools.SUITE_SYSTEM_PROMPT
    (suite,) = resolve_suites("toy-tools")
    assert suite.system_instruction == TOY_TOOLS_SYSTEM_PROMPT and suite.tasks[0].metric == "tool_call"


def test_the_tool_set_prepares_and_the_suite_scores_parsed_calls(zoo_family, tmp_path):
    from shadowft.zoo import tools

    stats = prepare_dataset(
        DataConfig(sources=[str(zoo_family.data / "tools.jsonl")], max_length=256, max_samples=50),
        zoo_family.instruct,
        tmp_path / "out",
    )
    assert stats.samples == 50 and stats.truncated == 0
    items = tools.suite_items()
    assert len({i["question"] for i in items}) == len(items) == 200
    rows = [json.loads(line) for line in (zoo_family.data / "tools.jsonl").read_text().splitlines()]
    train_questions = {r["messages"][1]["content"] for r in rows}
    assert not train_questions & {i["question"] for i in items}  # no evaluated question is trained on
    gold = items[0]["answer"]
    call = json.loads(gold)
    reply = "<tool_call>" + json.dumps(call) + "</tool_call>"
    assert tools.score_call(reply, gold) == {"tool_call": 1.0, "tool_name": 1.0}
    swapped = {**call, "arguments": {k: 0 for k in call["arguments"]}}
    assert tools.score_call(json.dumps(swapped), gold) == {"tool_call": 0.0, "tool_name": 1.0}
    assert tools.score_call("<tool_call>{not json</tool_call>", gold) == {"tool_call": 0.0, "tool_name": 0.0}


def refusal(tok, sources: list[str], **kw) -> ShadowFTError:
    with pytest.raises(ShadowFTError) as ei:
        tokenized_samples(DataConfig(sources=sources, **kw), tok)
    return ei.value


def test_rows_sft_must_not_train_on_are_refused_with_file_line_and_hint(embedded, tmp_path):
    err = refusal(embedded, [str(DATA / "images.json")])
    assert f"{DATA / 'images.json'} line 2: the row has images" in err.message and "text-only" in err.hint
    err = refusal(embedded, [str(DATA / "kto.json")])
    assert f"{DATA / 'kto.json'} line 2: the row is labelled for KTO" in err.message
    assert "set train.objective: kto" in err.hint
    err = refusal(embedded, [str(INFO) + "#pairs"])
    assert f"{DATA / 'ranking_sharegpt.json'} line 2: the row has chosen and rejected" in err.message
    assert "looks like preference data: set train.objective: dpo" in err.hint
    rows = [
        {"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                {"role": "assistant", "content": "A cat."},
            ]
        },
        {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "function", "content": "a"}]},
    ]
    for i, row in enumerate(rows):
        (tmp_path / f"{i}.jsonl").write_text(json.dumps(row) + "\n")
    assert "holds a <image> placeholder" in refusal(embedded, [str(tmp_path / "0.jsonl")]).message
    assert "part 0 is of type 'image_url'" in refusal(embedded, [str(tmp_path / "1.jsonl")]).message
    msg = refusal(embedded, [str(tmp_path / "2.jsonl")]).message
    assert (
        "conversations[1] has unknown role 'robot' (allowed: " in msg
        and "function_call" in msg
        and "observation" in msg
    )
    assert (
        "unknown role 'function' (allowed: assistant, system, tool, user)"
        in refusal(embedded, [str(tmp_path / "3.jsonl")]).message
    )


def test_dataset_info_entries_are_checked_before_any_work(tmp_path, embedded):
    from shadowft.data import check_sources_exist

    err = refusal(embedded, [str(INFO) + "#tools_sharegpd"])
    assert "defines no data set 'tools_sharegpt'" not in err.message and "did you mean tools_sharegpt" in err.hint
    info = tmp_path / "dataset_info.json"
    info.write_text(
        json.dumps(
            {"gone": {"file_name": "missing.json"}, "odd": {"file_name": "alpaca.json", "columns": {"answer": "x"}}}
        )
    )
    with pytest.raises(ShadowFTError, match="its file_name 'missing.json' does not exist"):
        check_sources_exist([f"{info}#gone"])
    shutil.copy(DATA / "alpaca.json", tmp_path / "alpaca.json")
    with pytest.raises(ShadowFTError, match="unknown column or tag 'answer'"):
        check_sources_exist([f"{info}#odd"])
    bad = tmp_path / "bad_roles.json"
    bad.write_text(json.dumps([{"dialog": [{"speaker": "client", "text": "q"}, {"speaker": "bot", "text": "a"}]}]))
    info.write_text(
        json.dumps(
            {
                "chat": {
                    "file_name": "bad_roles.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "dialog"},
                    "tags": {
                        "role_tag": "speaker",
                        "content_tag": "text",
                        "user_tag": "client",
                        "assistant_tag": "agent",
                    },
                }
            }
        )
    )
    msg = refusal(embedded, [f"{info}#chat"]).message
    assert f"{bad} line 1: dialog[1] has unknown role 'bot' (the tags of 'chat' accept: client, agent" in msg


@pytest.mark.slow
def test_dpo_reads_tool_conversations_and_dataset_info_pairs(zoo_family, tmp_path):
    from shadowft.preference import prepare_preferences

    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    row = {
        "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
        "chosen": [{"role": "assistant", "content": "", "tool_calls": [call]}],
        "rejected": [{"role": "assistant", "content": "6"}],
        "tools": [{"type": "function", "function": {"name": "add", "parameters": {"properties": {"a": {}, "b": {}}}}}],
    }
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    sources = [str(tmp_path / "p.jsonl"), f"{INFO}#pairs"]
    stats = prepare_preferences(DataConfig(sources=sources, max_length=256), zoo_family.instruct, tmp_path / "out")
    assert stats.pairs == 3
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert "Tools:\n- add(a, b)" in ds[0]["prompt"] and ds[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert ds[0]["chosen"] == embedded_call("add", {"a": 2, "b": 3}) and ds[0]["rejected"] == "6<|im_end|>"
    assert ds[1]["chosen"] == "Fast.<|im_end|>"
    with pytest.raises(ShadowFTError) as ei:
        prepare_preferences(DataConfig(sources=[f"{INFO}#feedback_kto"]), zoo_family.instruct, tmp_path / "o2")
    assert "labelled for KTO" in ei.value.message and "set train.objective: kto" in ei.value.hint


def test_a_dataset_info_source_is_keyed_by_the_content_of_the_data_it_names(tmp_path):
    """Editing the data behind `dataset_info.json#NAME` must change the data stage's key (else a stale
    prepared dataset would be reused)."""
    from shadowft.stages import source_ref

    folder = tmp_path / "lf"
    shutil.copytree(DATA, folder)
    source = f"{folder / 'dataset_info.json'}#qa_alpaca"
    before = source_ref(source)
    assert before.startswith("fp:")
    rows = json.loads((folder / "alpaca.json").read_text())
    rows[0]["output"] += " (edited)"
    (folder / "alpaca.json").write_text(json.dumps(rows))
    assert source_ref(source) != before
    assert source_ref(f"{folder / 'dataset_info.json'}#chat_sharegpt") != source_ref(source)
