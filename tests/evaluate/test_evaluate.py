"""The evaluation stage end to end through real lm-eval on tiny models (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shadowft.errors import ShadowFTError
from shadowft.evaluate import (
    EvalError,
    evaluate_model,
    list_suites,
    load_result,
    resolve_suites,
)
from tests.helpers import score_from_samples

MISSING_MODEL = Path("/nonexistent/model")  # a model that cannot load proves validation came first


def test_registry_has_the_suites_with_chance_levels():
    suites = {s.name: s for s in list_suites()}
    for name in (
        "toy-math",
        "toy-coding",
        "toy-reasoning",
        "toy-domain",
        "humaneval-offline",
        "coding",
        "math",
        "reasoning",
    ):
        assert name in suites
    assert suites["toy-math"].chance == 0.0 and suites["toy-math"].offline
    assert suites["toy-reasoning"].chance == pytest.approx(0.5)  # true/false
    assert suites["humaneval-offline"].code_execution and suites["coding"].code_execution
    assert not suites["math"].offline


def test_resolve_accepts_comma_lists_and_lm_eval_names():
    names = [s.name for s in resolve_suites(["toy-math,toy-reasoning", "toy-math", "gsm8k"])]
    assert names == ["toy-math", "toy-reasoning", "gsm8k"]


def test_unknown_suite_fails_before_the_model_loads(tmp_path):
    with pytest.raises(EvalError) as err:
        evaluate_model(MISSING_MODEL, ["toy-maths"], tmp_path)
    assert "toy-maths" in err.value.message
    assert "toy-math" in err.value.hint and "humaneval-offline" in err.value.hint
    with pytest.raises(EvalError, match="does not exist"):
        resolve_suites(["./no/such/folder"])


def test_code_suite_is_refused_without_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(EvalError) as err:
        evaluate_model(MISSING_MODEL, ["humaneval-offline"], tmp_path)
    assert "--allow-code-exec" in err.value.hint and "HF_ALLOW_CODE_EVAL" in err.value.hint


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ShadowFTError, match="not a model directory"):
        evaluate_model(tmp_path, ["toy-math"], tmp_path / "out")


def test_toy_suites_score_the_extracted_answer_and_report_the_strict_one(llama_trio, tmp_path):
    out = tmp_path / "eval"
    res = evaluate_model(llama_trio["instruct"], ["toy-math", "toy-reasoning"], out, limit=3)
    assert set(res.suites) == {"toy-math", "toy-reasoning"}
    math, reasoning = res.suites["toy-math"], res.suites["toy-reasoning"]
    assert math.n == 3 and math.chance == 0.0 and math.metric == "exact_match"
    assert reasoning.n == 3 and reasoning.chance == pytest.approx(0.5) and reasoning.metric == "exact_match"
    for name, s in (("toy-math", math), ("toy-reasoning", reasoning)):
        # the score is the mean of the per-sample records of 3 scored items, not a default
        assert score_from_samples(out, name) == (pytest.approx(s.score), [3])
        (task,) = s.tasks.values()
        assert task.metric == "exact_match,flexible" and task.score == task.metrics["exact_match,flexible"]
        assert "exact_match,strict" in task.metrics  # the reply as it is, reported beside
        assert task.stderr is not None and any("_stderr" in k for k in task.metrics)
    assert res.chat_template is True  # the tiny tokenizer has a ChatML template
    assert math.system_instruction  # the toy suites' own system prompt
    assert res.generation["toy_math"]["do_sample"] is False
    assert res.model.fingerprint and res.lm_eval_version == "0.4.13"
    # the JSON on disk is the same result, with per-sample logs beside it
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["suites"]["toy-math"]["score"] == math.score
    assert load_result(out / "results.json") == res
    rows = [json.loads(x) for x in (out / "samples_toy_math.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and "<|im_start|>user" in rows[0]["arguments"][0][0]  # 3 items x 2 filters
    assert {r["filter"] for r in rows} == {"flexible", "strict"}
    assert (out / "samples_toy_reasoning.jsonl").is_file()
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temp files


def test_chat_template_off_is_recorded(llama_trio, tmp_path):
    res = evaluate_model(llama_trio["base"], ["toy-coding"], tmp_path, limit=2, apply_chat_template=False)
    assert res.chat_template is False and res.suites["toy-coding"].system_instruction is None
    row = json.loads((tmp_path / "samples_toy_coding.jsonl").read_text().splitlines()[0])
    assert "<|im_start|>" not in row["arguments"][0][0]


def test_outside_a_git_repository_nothing_is_printed_about_git(llama_trio, tmp_path, monkeypatch, capfd):
    """lm-eval records the working dir's git hash by running `git`, which printed `fatal: not a git
    repository` once per model for a user who runs shadowft from a plain folder."""
    monkeypatch.chdir(tmp_path)  # tmp_path is outside any repository
    evaluate_model(llama_trio["instruct"], ["toy-math"], tmp_path / "o", limit=1)
    assert "not a git repository" not in capfd.readouterr().err


def test_humaneval_offline_with_opt_in(llama_trio, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    res = evaluate_model(
        llama_trio["instruct"], ["humaneval-offline"], tmp_path, limit=2, allow_code_execution=True, max_gen_toks=32
    )
    s = res.suites["humaneval-offline"]
    assert s.n == 2 and s.metric == "pass@1" and s.score == 0.0  # a random tiny model writes no working code
    assert score_from_samples(tmp_path, "humaneval-offline") == (0.0, [2])  # both programs were run and failed
    assert res.code_execution is True and res.generation["humaneval_offline"]["max_gen_toks"] == 32
    rows = [json.loads(x) for x in (tmp_path / "samples_humaneval_offline.jsonl").read_text().splitlines()]
    assert rows[0]["doc"]["task_id"] == "HumanEval/0" and "pass@1" in rows[0]


def test_user_task_folder(llama_trio, tmp_path):
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "qa.jsonl").write_text(
        "".join(json.dumps({"q": f"Is {i} even?", "a": ["no", "yes"][i % 2 == 0]}) + "\n" for i in range(6))
    )
    (folder / "my_qa.yaml").write_text(
        "task: my_qa\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: qa.jsonl\n"  # relative to this YAML
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{q}} Answer:'\n"
        "doc_to_choice: ['no', 'yes']\n"
        "doc_to_target: '{{a}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    res = evaluate_model(llama_trio["instruct"], [str(folder)], tmp_path / "out", limit=4)
    s = res.suites[str(folder.resolve())]
    assert s.kind == "folder" and s.n == 4 and s.metric == "acc"
    # acc recomputed from the model's own log-likelihoods: right when the target choice scored highest
    rows = [json.loads(x) for x in (tmp_path / "out" / "samples_my_qa.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    picks = [max(range(len(r["filtered_resps"])), key=lambda i, r=r: float(r["filtered_resps"][i][0])) for r in rows]
    assert s.score == pytest.approx(sum(p == ["no", "yes"].index(r["doc"]["a"]) for p, r in zip(picks, rows)) / 4)
    assert score_from_samples(tmp_path / "out", str(folder.resolve())) == (pytest.approx(s.score), [4])


def test_cli_eval_and_suites(llama_trio, tmp_path):
    from shadowft.cli import app

    runner = CliRunner()
    listing = runner.invoke(app, ["suites"])
    assert listing.exit_code == 0 and "toy-reasoning" in listing.output
    out = tmp_path / "r" / "res.json"
    ran = runner.invoke(
        app,
        [
            "eval",
            str(llama_trio["instruct"]),
            "--suite",
            "toy-domain",
            "--limit",
            "2",
            "--output",
            str(out),
            "--no-chat-template",
        ],
    )
    assert ran.exit_code == 0, ran.output
    assert "toy-domain" in ran.output and out.is_file()
    assert "0.0" in ran.output and "0.000" not in ran.output  # % with one decimal, as `shadowft run` shows
    from shadowft.evaluate import list_suites

    described = {s.name: s.description for s in list_suites()}
    assert "reverse a 3-4 digit string" in described["toy-domain"] and "true/false" in described["toy-reasoning"]
    assert json.loads(out.read_text())["chat_template"] is False
    refused = runner.invoke(app, ["eval", str(llama_trio["instruct"]), "--suite", "humaneval-offline"])
    assert refused.exit_code != 0 and isinstance(refused.exception, ShadowFTError)
