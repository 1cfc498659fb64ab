"""The own-data suite: a real tiny model answers the held-out split of prepared data through lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowft.config import DataConfig, EvalConfig
from shadowft.evaluate import evaluate_model, resolve_suites
from shadowft.evaluate.own_data import OWN_DATA_SUITE, own_data_rows, write_own_data_task
from shadowft.report import summarize, to_markdown
from shadowft.runs import samples_markdown
from shadowft.stages import data_spec, eval_spec, run
from shadowft.store import ArtifactStore


@pytest.fixture(scope="module")
def held_out(zoo_family, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The zoo's domain set (reverse a digit string), 40 conversations, 5 of them held out."""
    from shadowft.data import prepare_dataset

    tmp = tmp_path_factory.mktemp("own")
    source = tmp / "mine.jsonl"
    records = [json.loads(x) for x in (zoo_family.data / "domain.jsonl").read_text().splitlines()[:40]]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = DataConfig(sources=[str(source)], validation_ratio=0.125, max_length=128)
    prepare_dataset(spec, zoo_family.instruct, tmp / "prepared")
    return tmp / "prepared", records


def _reply(record: dict) -> tuple[str, str]:
    msgs = record["messages"]
    return next(m["content"] for m in msgs if m["role"] == "user"), msgs[-1]["content"]


def test_rows_are_the_held_out_conversations_as_training_rendered_them(held_out, zoo_family):
    from transformers import AutoTokenizer

    data_dir, records = held_out
    rows, stops, longest = own_data_rows(data_dir)
    assert len(rows) == 5 and longest > 0
    tok = AutoTokenizer.from_pretrained(zoo_family.instruct)
    by_question = {_reply(r)[0]: r["messages"] for r in records}
    for row in rows:
        msgs = by_question[row["question"]]  # the last user message, as tables show it
        assert row["answer"] == msgs[-1]["content"]
        # the prompt is the template's rendering up to the reply (system prompt and generation prompt too)
        assert row["prompt"] == tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
    assert stops and all(s in tok.all_special_tokens for s in stops)
    assert write_own_data_task(data_dir.parent / "nothing-here", data_dir.parent / "x") is None


@pytest.mark.slow
def test_own_data_suite_scores_greedy_replies_with_exact_match_and_chrf(held_out, zoo_family, tmp_path):
    data_dir, _ = held_out
    folder = write_own_data_task(data_dir, tmp_path / "task")
    assert folder is not None
    (suite,) = resolve_suites([str(folder)])
    assert suite.name == OWN_DATA_SUITE and suite.rendered_prompts and suite.kind == "folder"
    res = evaluate_model(zoo_family.instruct, [str(folder), "toy-domain"], tmp_path / "out", limit=5, label="instruct")
    own = res.suites[OWN_DATA_SUITE]
    assert own.n == 5 and own.chat_template is False and res.suites["toy-domain"].chat_template is True
    rows = [json.loads(x) for x in (tmp_path / "out" / "samples_own_data.jsonl").read_text().splitlines()]
    replies = [r["filtered_resps"][0] if isinstance(r["filtered_resps"], list) else r["filtered_resps"] for r in rows]
    # the score is recomputed from the model's own replies: exact match of the stripped reply
    exact = [float(reply.strip() == r["doc"]["answer"]) for reply, r in zip(replies, rows, strict=True)]
    assert own.score == pytest.approx(sum(exact) / 5)
    assert [r["exact_match"] for r in rows] == exact
    import sacrebleu

    chrf = [sacrebleu.sentence_chrf(x, [r["doc"]["answer"]]).score / 100 for x, r in zip(replies, rows, strict=True)]
    assert own.tasks["own_data"].metrics["chrf,strip"] == pytest.approx(sum(chrf) / 5)
    assert all(reply for reply in replies)  # the tiny model replies something to every prompt
    # the prompts went to the model as rendered (no second template around them)
    sent = json.dumps(rows[0]["arguments"])
    assert json.dumps(rows[0]["doc"]["prompt"])[1:-1] in sent and sent.count("<|im_start|>system") == 1

    summary = summarize({"instruct": json.loads((tmp_path / "out" / "results.json").read_text())})
    assert summary["suites"][-1] == OWN_DATA_SUITE
    assert summary["scores"]["instruct"]["mean"] == pytest.approx(res.suites["toy-domain"].score)  # own-data apart
    assert summary["own_data"]["instruct"]["chrf"] == pytest.approx(sum(chrf) / 5, abs=1e-6)
    assert "chrF" in to_markdown(summary)
    md = samples_markdown({"instruct": tmp_path / "out"})
    assert md is not None and rows[0]["doc"]["question"] in md and rows[0]["doc"]["answer"] in md
    assert md.count("\n| ") == 2 + 5  # header, separator, a row per prompt


def test_eval_stage_adds_own_data_only_with_a_validation_split(zoo_family, held_out, tmp_path):
    """The run's eval stage: own-data comes from the data artifact; without a split (or with
    eval.own_data off) the key is the one evaluations had before own-data existed."""
    records = held_out[1]
    source = tmp_path / "mine.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records[:16]))
    store = ArtifactStore(tmp_path / "store")
    with_split, _ = run(data_spec(DataConfig(sources=[str(source)], validation_ratio=0.25), zoo_family.instruct), store)
    no_split, _ = run(data_spec(DataConfig(sources=[str(source)]), zoo_family.instruct), store)
    cfg = EvalConfig(suites=["toy-domain"], limit=2)
    plain = eval_spec(cfg, zoo_family.instruct, store=store).key
    assert eval_spec(cfg, zoo_family.instruct, store=store, data=no_split).key == plain
    off = cfg.model_copy(update={"own_data": False})
    assert eval_spec(off, zoo_family.instruct, store=store, data=with_split).key == plain
    spec = eval_spec(cfg, zoo_family.instruct, store=store, data=with_split, model_label="instruct")
    assert spec.key != plain
    art, built = run(spec, store)
    result = json.loads((art.path / "results.json").read_text())
    assert built and list(result["suites"]) == ["toy-domain", OWN_DATA_SUITE]
    assert result["suites"][OWN_DATA_SUITE]["n"] == 2  # eval.limit applies to it too
    assert (art.path / "own-data" / "own_data.jsonl").is_file()  # the task lm-eval ran, kept with the results


@pytest.mark.slow
def test_the_example_task_folder_runs_as_a_suite(zoo_family, tmp_path):
    """examples/my-task: a user's own lm-eval task folder, named by its shadowft-suite.json."""
    from typer.testing import CliRunner

    from shadowft.cli import app

    folder = Path(__file__).resolve().parents[2] / "examples" / "my-task"
    out = tmp_path / "res" / "results.json"
    ran = CliRunner().invoke(
        app, ["eval", str(zoo_family.instruct), "--suite", str(folder), "--limit", "2", "--output", str(out)]
    )
    assert ran.exit_code == 0, ran.output
    suite = json.loads(out.read_text())["suites"]["capitals"]
    assert suite["kind"] == "folder" and suite["n"] == 2 and suite["metric"] == "exact_match"
    assert suite["tasks"]["capitals"]["metric"] == "exact_match,strip" and suite["score"] is not None
