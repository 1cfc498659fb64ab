"""Shadow-RL (TRL's GRPOTrainer as the `grpo` objective): the verifiable rewards on hand-written
completions, the prompt rows and their refusals, the settings sub-section and its cache key, the
refusals before any stage, and a few real GRPO steps on the tiny trio."""

from __future__ import annotations

import json

import pytest
import torch

from shadowft.config import DataConfig, TrainConfig, load_config
from shadowft.errors import ShadowFTError
from shadowft.train.objectives import get_objective
from shadowft.train.objectives.grpo import GRPOSettings, prepare_grpo
from shadowft.train.rewards import REWARDS, extract_answer

GRPO = {"objective": "grpo", "batch_size": 4, "grad_accum": 1}


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def _score(entry: dict, completions: list[str], **columns) -> list[float | None]:
    settings = GRPOSettings(rewards=[entry]).rewards[0]
    return REWARDS[settings.name].make(settings)(completions=completions, prompts=[""] * len(completions), **columns)


def _settings(**grpo) -> TrainConfig:
    return TrainConfig(**GRPO, grpo=grpo)


# -- rewards ---------------------------------------------------------------------------------------


def test_exact_match_extracts_the_answer_from_the_last_line_or_a_pattern():
    completions = ["Let me think.\nAnswer: 42", "The answer is 42.", "42", "answer: 41", "", "Answer: FORTY-TWO"]
    assert _score({"name": "exact_match"}, completions, answer=["42"] * 6) == [1, 1, 1, 0, 0, 0]
    assert _score({"name": "exact_match", "ignore_case": True}, ["Answer: Paris"], answer=["paris"]) == [1.0]
    pattern = {"name": "exact_match", "pattern": r"\[(.*?)\]", "column": "gold"}
    assert _score(pattern, ["[1] then [7]", "7", "[ 7 ]"], gold=["7", "7", "7"]) == [1, 0, 1]  # the last match
    assert extract_answer("first\n\n  The answer is 12.  \n", None) == "12"


def test_regex_is_a_format_reward_on_the_whole_completion_or_a_part():
    full = {"name": "regex", "pattern": r"\[\d+\]"}
    assert _score(full, ["[42]", " [42]\n", "42", "[42] because"], answer=["x"] * 4) == [1, 1, 0, 0]
    part = {"name": "regex", "pattern": r"\[\d+\]", "full": False}
    assert _score(part, ["[42] because", "no"]) == [1, 0]  # reads no column


def test_numeric_compares_the_last_number_within_a_tolerance():
    entry = {"name": "numeric", "tolerance": 0.01}
    completions = ["Answer: 3.14159", "about 3.2", "1,000", "none", "x = -2"]
    assert _score(entry, completions, answer=["3.14", "3.14", "1000", "3", "-2"]) == [1, 0, 1, 0, 1]
    assert _score({"name": "numeric", "rel_tolerance": 0.1}, ["105"], answer=["100"]) == [1.0]


def test_a_reward_refuses_data_without_its_column():
    with pytest.raises(ShadowFTError, match="reward exact_match: the data has no column 'answer'"):
        _score({"name": "exact_match"}, ["1"], solution=["1"])


def test_code_reward_runs_only_with_the_opt_in_and_then_in_the_sandbox(monkeypatch):
    entry = {"name": "code", "timeout_s": 10}
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(ShadowFTError, match="execute model-written code") as err:
        _score(entry, ["def f(): return 1"], tests=["assert f() == 1"])
    assert "HF_ALLOW_CODE_EVAL=1" in err.value.hint
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    good = "Here:\n```python\ndef f(x):\n    return x + 1\n```"
    assert _score(entry, [good, "def f(x): return x", good], tests=["assert f(1) == 2"] * 2 + [""]) == [1, 0, 0]


# -- data ------------------------------------------------------------------------------------------


def test_prompts_are_rendered_with_the_chat_template_and_references_kept_as_text(llama_trio, tmp_path):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    rows = [
        {"messages": [{"role": "user", "content": "what is 1 + 1?"}], "answer": "2"},
        {"messages": [{"role": "user", "content": "what is 2 + 1?"}], "answer": 3, "meta": {"level": 1}},
    ]
    stats = prepare_grpo(
        DataConfig(sources=[_write(tmp_path / "g.jsonl", rows)]), llama_trio["instruct"], tmp_path / "p"
    )
    assert (stats.prompts, stats.columns) == (2, ["answer", "meta"])
    ds = load_from_disk(str(tmp_path / "p" / "dataset"))
    tok = AutoTokenizer.from_pretrained(str(llama_trio["instruct"]))
    assert ds[0]["prompt"] == tok.apply_chat_template(rows[0]["messages"], tokenize=False, add_generation_prompt=True)
    assert (ds["answer"], ds["meta"]) == (["2", "3"], [None, '{"level": 1}'])
    assert ds["_where"][1].endswith("g.jsonl line 2")
    # the prompt column (text or messages, TRL's format) gives the same prompt
    other = [{"prompt": "what is 1 + 1?", "answer": "2"}]
    prepare_grpo(DataConfig(sources=[_write(tmp_path / "t.jsonl", other)]), llama_trio["instruct"], tmp_path / "q")
    assert load_from_disk(str(tmp_path / "q" / "dataset"))[0]["prompt"] == ds[0]["prompt"]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "line 2: the prompt must end with a user turn",
        ),
        ({"prompt": "q", "_where": "x"}, "line 2: field '_where' is reserved"),
        ({"question": "q", "answer": "1"}, "line 1: unrecognised GRPO row"),
    ],
)
def test_malformed_rows_are_refused_with_file_and_line(llama_trio, tmp_path, row, problem):
    good = {"messages": [{"role": "user", "content": "p"}]} if "messages" in row else {"prompt": "p"}
    rows = [row] if "question" in row else [good, row]  # the format is detected per file, from its first row
    with pytest.raises(ShadowFTError, match=r"g\.jsonl " + problem) as err:
        prepare_grpo(DataConfig(sources=[_write(tmp_path / "g.jsonl", rows)]), llama_trio["instruct"], tmp_path / "o")
    assert "accepted GRPO rows" in err.value.hint
    assert not (tmp_path / "o").exists()


def test_rows_without_the_column_a_reward_reads_are_refused_before_the_model_loads(llama_trio, tmp_path):
    from shadowft.data import load_prepared
    from shadowft.train import train_model

    rows = [
        {"prompt": "a", "answer": "1"},
        {"prompt": "b"},
        {"prompt": "c", "answer": ""},
        {"prompt": "d", "answer": "4"},
    ]
    prepare_grpo(DataConfig(sources=[_write(tmp_path / "g.jsonl", rows)]), llama_trio["instruct"], tmp_path / "p")
    with pytest.raises(
        ShadowFTError, match=r"2 GRPO row\(s\) lack the column 'answer'.*\n.*g\.jsonl line 2.*\n.*line 3"
    ):
        train_model(llama_trio["base"], tmp_path / "p", _settings(), tmp_path / "out", tmp_path / "work")
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    spec = _settings(rewards=[{"name": "numeric", "column": "gold"}, {"name": "regex", "pattern": "x"}])
    with pytest.raises(ShadowFTError, match="no column 'gold', which reward numeric reads") as err:
        get_objective("grpo").check_train_data(load_prepared(tmp_path / "p"), tmp_path / "p", spec)
    assert "train.grpo.rewards: column" in err.value.hint
    # a regex reward reads no column: the same data is fine for it
    get_objective("grpo").check_train_data(
        load_prepared(tmp_path / "p"), tmp_path / "p", _settings(rewards=[{"name": "regex", "pattern": "x"}])
    )


# -- settings, key, preflight ------------------------------------------------------------------------


def test_grpo_settings_from_yaml_and_overrides_are_its_sub_section_in_its_key_only(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "train:\n  objective: grpo\n  batch_size: 4\n  grad_accum: 2\n  grpo:\n    num_generations: 8\n"
        "    rewards:\n      - {name: exact_match, column: solution}\n      - {name: regex, pattern: '\\[.*\\]', weight: 0.5}\n"
    )
    run = load_config(cfg, ["train.grpo.temperature=0.7", "train.grpo.beta=0"])
    s = run.train.objective_settings
    assert (s.num_generations, s.temperature, s.beta) == (8, 0.7, 0.0)
    assert [(r.name, r.weight) for r in s.rewards] == [("exact_match", 1.0), ("regex", 0.5)]
    assert s.rewards[0].column == "solution" and run.train.effective_lr == 1e-5
    view = run.train.cache_view()
    assert view["grpo"]["rewards"][1]["pattern"] == r"\[.*\]" and "kto" not in view
    assert "grpo" not in load_config(None, []).train.cache_view()
    assert "grpo" in TrainConfig.model_json_schema()["properties"]["objective"]["enum"]
    for bad, says in [
        ("train.grpo.num_generations=3", "must be a multiple of train.grpo.num_generations"),
        ("train.grpo.rewards=[]", "needs a reward"),
        ("train.grpo.rewards=[{name: exact}]", "does not match any of the expected tags: 'exact_match'"),
        ("train.grpo.rewards=[{name: regex, pattern: '('}]", "not a regular expression"),
        ("train.grpo.reward_module=nocolon", "package.module:function"),
    ]:
        with pytest.raises(ShadowFTError, match=says):
            load_config(cfg, [bad])


def test_the_key_moves_with_a_reward_setting_and_the_reward_modules_content(tmp_path):
    mod = tmp_path / "my_reward.py"
    mod.write_text("def score(completions, **kw):\n    return [1.0 for _ in completions]\n")
    ref = f"{mod}:score"
    base = _settings(reward_module=ref).cache_view()
    assert len(base["reward_module_sha256"]) == 64
    assert _settings(reward_module=ref).cache_view() == base  # stable
    assert _settings(reward_module=ref, rewards=[{"name": "exact_match", "column": "gold"}]).cache_view() != base
    assert _settings(reward_module=ref, rewards=[{"name": "exact_match", "weight": 2}]).cache_view() != base
    mod.write_text("def score(completions, **kw):\n    return [0.0 for _ in completions]\n")
    assert _settings(reward_module=ref).cache_view() != base
    from shadowft.train.rewards import load_reward_function

    assert load_reward_function(ref)(completions=["a", "b"]) == [0.0, 0.0]


def test_refused_before_any_stage_vllm_without_a_gpu_code_without_opt_in_missing_module(monkeypatch, tmp_path):
    import torch

    from shadowft.train.preflight import check_launch

    check_launch(_settings())
    if not torch.cuda.is_available():
        with pytest.raises(ShadowFTError, match="use_vllm .*needs a GPU") as err:
            check_launch(_settings(use_vllm=True))
        assert "use_vllm=false" in err.value.hint
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(ShadowFTError, match="reward\\(s\\) code execute model-written code"):
        check_launch(_settings(rewards=[{"name": "code"}]))
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    check_launch(_settings(rewards=[{"name": "code"}]))
    with pytest.raises(ShadowFTError, match="no file .*nowhere.py"):
        check_launch(_settings(reward_module=f"{tmp_path}/nowhere.py:f"))
    with pytest.raises(ShadowFTError, match="module 'no_such_pkg.rewards' is not importable") as err:
        check_launch(_settings(reward_module="no_such_pkg.rewards:f"))
    assert "PYTHONPATH" in err.value.hint


# -- training --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_grpo_trains_and_records_rewards_kl_and_lengths(llama_trio, tmp_path, method):
    """A few real GRPO steps: 2 prompts x 2 generations of 8 tokens, the built-in reward and a user's
    (the tiny model never answers right: without the user's reward every advantage is 0 and nothing moves)."""
    from safetensors.torch import load_file

    from shadowft.train import train_model

    (tmp_path / "rw.py").write_text("def longer(completions, **kw):\n    return [len(c) / 10 for c in completions]\n")
    rows = [{"prompt": f"what is {a} + 1?", "answer": str(a + 1)} for a in range(8)]
    prepare_grpo(DataConfig(sources=[_write(tmp_path / "g.jsonl", rows)]), llama_trio["instruct"], tmp_path / "p")
    spec = TrainConfig(
        objective="grpo",
        method=method,
        batch_size=4,
        grad_accum=1,
        max_steps=3,
        lr=5e-2,
        save_steps=100,
        grpo={"num_generations": 2, "max_completion_length": 8, "reward_module": f"{tmp_path}/rw.py:longer"},
    )
    res = train_model(llama_trio["base"], tmp_path / "p", spec, tmp_path / "out", tmp_path / "work")
    curve = json.loads((tmp_path / "out" / "loss_curve.json").read_text())
    assert [c["step"] for c in curve] == [1, 2, 3] and res.objective == "grpo"
    keys = {"reward", "rewards/exact_match/mean", "rewards/longer/mean", "kl", "completions/mean_length"}
    assert all(keys <= c.keys() for c in curve)
    assert any(c["rewards/longer/mean"] > 0 for c in curve) and curve[-1]["kl"] >= 0
    if method == "full":  # every weight moved from Base's
        start = load_file(str(llama_trio["base"] / "model.safetensors"))
        tuned = load_file(str(tmp_path / "out" / "model.safetensors"))
        assert all(not torch.equal(start[k], tuned[k]) for k in start)
        return
    weights = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())  # it moved from 0
    assert not (tmp_path / "out" / "ref").exists()  # TRL's frozen reference adapter is not published


def test_the_zoo_grpo_set_is_math_and_reasoning_prompts_with_answers_exact_match_scores():
    """`zoo:grpo` in the shipped family is what the build writes (its own seeded generator), and
    Instruct's answer style ("47", "true") scores 1 with the default exact_match reward."""
    import hashlib
    import random

    from shadowft.stages import zoo_placeholders
    from shadowft.zoo import corpus
    from shadowft.zoo.build import FAMILY_VERSION, FamilyConfig
    from shadowft.zoo.shipped import shipped_dir

    root = shipped_dir(FAMILY_VERSION, "default", 0)
    rows = corpus.read_jsonl(zoo_placeholders(root)["grpo"])
    assert rows == corpus.grpo_rows(random.Random("0:grpo"), FamilyConfig().general_size // 2, corpus.eval_questions())
    assert all([m["role"] for m in r["messages"]] == ["system", "user"] for r in rows)
    assert not {r["messages"][1]["content"] for r in rows} & corpus.eval_questions()  # no evaluated question
    assert 200 < sum(r["answer"] in ("true", "false") for r in rows) < 400  # ~30% reasoning, the rest math
    manifest = json.loads((root / "family.json").read_text())
    digest = hashlib.sha256((root / "data" / "grpo.jsonl").read_bytes()).hexdigest()
    assert manifest["data"]["grpo"] == 1000 and manifest["checksums"]["data/grpo.jsonl"] == digest
    assert (
        _score({"name": "exact_match"}, [r["answer"] for r in rows[:5]], answer=[r["answer"] for r in rows[:5]])
        == [1] * 5
    )


def test_plan_counts_the_completions_in_a_grpo_steps_sequence():
    from shadowft.plan import plan_run

    def seq(*sets: str) -> int:
        return plan_run(load_config(None, ["pair.base=zoo:base", "data.max_length=128", *sets]))[1].seq_len

    grpo = ["train.objective=grpo", "train.batch_size=4", "train.grad_accum=1"]
    assert seq() == 128 and seq(*grpo) == 128 + 64
    assert seq(*grpo, "train.grpo.max_completion_length=200") == 328


def test_image_rows_are_refused_grpo_trains_text_only(llama_trio, tmp_path):
    rows = [{"prompt": "p"}, {"prompt": "<image>how many?"}]
    with pytest.raises(ShadowFTError, match=r"g\.jsonl line 2: field 'prompt' holds a <image> placeholder") as err:
        prepare_grpo(DataConfig(sources=[_write(tmp_path / "g.jsonl", rows)]), llama_trio["instruct"], tmp_path / "o")
    assert "trains text only" in str(err.value) + str(err.value.hint)
