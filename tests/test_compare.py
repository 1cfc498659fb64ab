"""The comparison flow (Shadow-FT vs conventional tuning over seeds): aggregation by hand, a real
Prefect run on tiny models, and a re-run that reuses every cached stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from shadowft.compare import (
    STRICT_TITLE,
    CompareConfig,
    aggregate,
    carried_share,
    carried_text,
    load_compare_config,
    mean_std,
    notes,
    rounded_summary,
    to_markdown,
    write_comparison,
)
from shadowft.errors import ShadowFTError
from shadowft.evaluate.results import filtered_score
from tests.helpers import settled_task_runs
from tests.test_pipeline import write_dataset

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _res(**scores: float) -> dict:
    return {"suites": {s: {"score": v, "chance": 0.5 if s == "r" else 0.0, "n": 10} for s, v in scores.items()}}


def test_mean_std_by_hand():
    m, s = mean_std([0.2, 0.4, 0.6])
    assert m == pytest.approx(0.4) and s == pytest.approx(0.2)  # sqrt((0.04 + 0 + 0.04) / 2)
    assert mean_std([0.3]) == (0.3, None)
    assert mean_std([]) == (None, None)


def test_aggregate_by_hand():
    results = {
        "instruct": {"-": _res(a=0.5, r=0.6)},
        "direct-lora": {"0": _res(a=0.2, r=0.6), "1": _res(a=0.4, r=0.6), "2": _res(a=0.6, r=0.6)},
        "shadow-lora": {"0": _res(a=0.5, r=0.7), "1": _res(a=0.5, r=0.6), "2": _res(a=0.8, r=0.8)},
    }
    info = {
        "instruct": {"kind": "reference"},
        "direct-lora": {"kind": "direct", "baseline": "direct-lora"},
        "shadow-lora": {"kind": "shadow", "baseline": "direct-lora"},
    }
    dist = {"shadow-lora": {"0": {"trained": 0.01, "final": 0.02}, "1": {"trained": 0.03, "final": 0.04}}}
    s = aggregate(results, info, dist, title="t")
    d, sh = s["models"]["direct-lora"], s["models"]["shadow-lora"]
    assert d["mean"]["a"] == pytest.approx(0.4) and d["std"]["a"] == pytest.approx(0.2)
    assert d["std"]["r"] == pytest.approx(0.0)
    # the suite mean is taken per seed (0.4, 0.5, 0.6), then over seeds
    assert d["mean"]["mean"] == pytest.approx(0.5) and d["std"]["mean"] == pytest.approx(0.1)
    assert d["change"]["a"] == pytest.approx(-0.1) and d["change"]["mean"] == pytest.approx(-0.05)
    assert sh["mean"]["r"] == pytest.approx(0.7) and sh["std"]["r"] == pytest.approx(0.1)
    assert s["models"]["instruct"]["std"]["a"] is None  # one evaluation: no spread
    # paired by seed: a diffs 0.3, 0.1, 0.2 -> mean 0.2, std 0.1, se 0.1/sqrt(3); 0.2 > 2 se
    p = s["paired"]["shadow-lora"]
    assert p["vs"] == "direct-lora"
    assert p["diff"]["a"] == pytest.approx(0.2) and p["std"]["a"] == pytest.approx(0.1)
    assert p["se"]["a"] == pytest.approx(0.1 / math.sqrt(3)) and p["beyond_spread"]["a"] is True
    # r diffs 0.1, 0.0, 0.2 -> mean 0.1, std 0.1, se 0.0577: 0.1 < 0.115, within the spread
    assert p["diff"]["r"] == pytest.approx(0.1) and p["beyond_spread"]["r"] is False
    assert s["distances"]["shadow-lora"]["trained"]["mean"] == pytest.approx(0.02)
    assert s["distances"]["shadow-lora"]["final"]["std"] == pytest.approx(math.sqrt(2) * 0.01)
    md = to_markdown(s)
    assert "| direct-lora | 3 | 40.0 ± 20.0 (-10.0) | 60.0 ± 0.0 (+0.0) | 50.0 ± 10.0 (-5.0) |" in md
    assert "**+20.0 ± 10.0**" in md and "| shadow-lora | vs" not in md


def test_the_base_row_has_a_footnote_saying_why_it_is_near_zero():
    """Base is scored without a chat template: its row of zeros is explained under the table (issue 26)."""
    results = {"instruct": {"-": _res(a=0.5, r=0.6)}, "base": {"-": _res(a=0.0, r=0.0)}}
    info = {
        "instruct": {"kind": "reference", "chat_template": True},
        "base": {"kind": "reference", "chat_template": False},
    }
    s = aggregate(results, info)
    (note,) = notes(s)
    assert note.startswith("base: scored without a chat template") and "near 0 are expected" in note
    assert f"*{note}*" in to_markdown(s)
    assert notes(aggregate({"instruct": results["instruct"]}, {"instruct": info["instruct"]})) == []


def test_carried_share_by_hand_over_seeds():
    # gains of the tuned Base over Base (0.2): 0.4, 0.2, 0.3 -> mean 0.3, std 0.1, se 0.0577: shown
    c = carried_share({"0": 0.7, "1": 0.6, "2": 0.5}, {"0": 0.6, "1": 0.4, "2": 0.5}, instruct=0.5, base=0.2)
    assert c["per_seed"] == pytest.approx({"0": 0.5, "1": 0.5, "2": 0.0})  # 0.2/0.4, 0.1/0.2, 0/0.3
    assert c["shown"] and c["why"] is None
    assert c["mean"] == pytest.approx(1 / 3) and c["std"] == pytest.approx(math.sqrt(1 / 12))
    assert c["gain"]["mean"] == pytest.approx(0.3) and c["gain"]["se"] == pytest.approx(0.1 / math.sqrt(3))
    # gains 0.3, -0.1, 0.1 -> mean 0.1, std 0.2, se 0.115 > 0.1: within the noise, not shown
    c = carried_share({"0": 0.7, "1": 0.6, "2": 0.5}, {"0": 0.5, "1": 0.1, "2": 0.3}, instruct=0.5, base=0.2)
    assert not c["shown"] and c["mean"] is None and c["std"] is None
    assert "+10.0 points" in c["why"] and "3 seeds" in c["why"]
    # a seed without a gain has no share; the mean is over the others
    # (gains 0.4, 0, 0.4: mean 0.267 > se 0.133)
    c = carried_share({"0": 0.9, "1": 0.6, "2": 0.9}, {"0": 0.6, "1": 0.2, "2": 0.6}, instruct=0.5, base=0.2)
    assert c["per_seed"] == {"0": pytest.approx(1.0), "1": None, "2": pytest.approx(1.0)}
    assert c["shown"] and c["mean"] == pytest.approx(1.0) and c["std"] == pytest.approx(0.0)
    assert not carried_share({"0": 0.5}, {"1": 0.9}, 0.5, 0.2)["shown"]  # no common seed


def test_carried_share_one_seed_uses_the_binomial_error_of_the_difference():
    # Base 0.5 and tuned Base 0.56 on 100 items: se sqrt((0.25 + 0.2464) / 100) = 0.0705; a gain of 0.08
    # is beyond it, 0.06 is not
    c = carried_share({"-": 0.54}, {"-": 0.58}, instruct=0.5, base=0.5, items=100)
    assert c["shown"] and c["mean"] == pytest.approx(0.5) and c["std"] is None
    assert c["gain"]["se"] == pytest.approx(math.sqrt((0.25 + 0.58 * 0.42) / 100)) and c["gain"]["n"] == 1
    c = carried_share({"-": 0.53}, {"-": 0.56}, instruct=0.5, base=0.5, items=100)
    assert not c["shown"] and "binomial" in c["why"] and "100 items" in c["why"]
    # the same gain on 400 items (se 0.035) is beyond it; unknown items: no standard error, not shown
    assert carried_share({"-": 0.53}, {"-": 0.56}, instruct=0.5, base=0.5, items=400)["shown"]
    assert "unknown" in carried_share({"-": 0.53}, {"-": 0.56}, 0.5, 0.5, items=None)["why"]
    # Base at 0 %: its own binomial error is 0 (any gain would pass), the difference's is not
    c = carried_share({"-": 0.0}, {"-": 0.01}, instruct=0.0, base=0.0, items=100)
    assert c["gain"]["se"] == pytest.approx(math.sqrt(0.01 * 0.99 / 100))
    assert not carried_share({"-": 0.0}, {"-": 0.01}, instruct=0.0, base=0.0, items=1)["shown"]


def test_carried_table_in_the_comparison_markdown():
    results = {
        "instruct": {"-": _res(a=0.5, r=0.6)},
        "base": {"-": _res(a=0.1, r=0.3)},
        "tuned-base-lora": {"0": _res(a=0.5, r=0.3), "1": _res(a=0.7, r=0.4)},
        "direct-lora": {"0": _res(a=0.4, r=0.6), "1": _res(a=0.4, r=0.5)},
        "shadow-lora": {"0": _res(a=0.7, r=0.6), "1": _res(a=0.8, r=0.6)},
    }
    info = {
        "instruct": {"kind": "reference", "chat_template": True},
        "base": {"kind": "reference", "chat_template": False},
        "tuned-base-lora": {"kind": "tuned-base", "method": "lora", "chat_template": False},
        "direct-lora": {"kind": "direct", "method": "lora", "baseline": "direct-lora"},
        "shadow-lora": {"kind": "shadow", "method": "lora", "baseline": "direct-lora"},
    }
    s = aggregate(results, info)
    # a: gains 0.4, 0.6 (se 0.1), shares 0.2/0.4 = 0.5, 0.3/0.6 = 0.5; r: gains 0, 0.1 (se 0.05 = mean) -> —
    c = s["carried"]["shadow-lora"]
    assert c["vs"] == "tuned-base-lora" and c["a"]["mean"] == pytest.approx(0.5) and not c["r"]["shown"]
    md = to_markdown(rounded_summary(s))
    assert "| shadow-lora | tuned-base-lora | 50 ± 0 | — |" in md
    assert carried_text({"a": c["a"], "r": c["r"]}) == "a 50 ± 0 %, r —"  # the terminal's line
    assert "- shadow-lora, r: the tuned Base's gain over Base (+5.0 points) is not beyond" in md
    assert "| tuned-base-lora | 2 |" in md and any(n.startswith("tuned-base-lora: the tuned Base") for n in notes(s))
    # without Base (include_base false) there is no gain to share
    no_base = {k: v for k, v in results.items() if k != "base"}
    assert "carried" not in aggregate(no_base, info) and "Carried" not in to_markdown(aggregate(no_base, info))


def test_carried_line_in_the_run_report_with_one_seed():
    """`shadowft run` with the tuned-base baseline: one seed, so the gate is Base's binomial error."""
    from shadowft.config import RunConfig
    from shadowft.report import summarize
    from shadowft.report import to_markdown as run_markdown

    def res(a: float, r: float) -> dict:
        return {"suites": {s: {"score": v, "chance": 0.0, "n": 100} for s, v in (("a", a), ("r", r))}}

    # a: Base 0.5, se 0.05, gain 0.2 -> (0.6 - 0.5) / 0.2 = 50 %; r: gain 0.04 < se 0.05 -> —
    results = {
        "instruct": res(0.5, 0.6),
        "base": res(0.5, 0.5),
        "tuned-base": res(0.7, 0.54),
        "shadow-ft": res(0.6, 0.6),
    }
    summary = summarize(results)
    assert summary["carried"]["a"]["mean"] == pytest.approx(0.5) and not summary["carried"]["r"]["shown"]
    md = run_markdown(summary)
    assert "| carried (%) | 50 | — |" in md and "- r: the tuned Base's gain over Base (+4.0 points)" in md
    assert "carried" not in summarize({k: v for k, v in results.items() if k != "tuned-base"})
    assert RunConfig(baselines=["instruct", "tuned-base"]).baselines == ["instruct", "tuned-base"]


def test_tuned_base_is_on_by_default_in_compare():
    assert CompareConfig().include_tuned_base and CompareConfig().include_base
    assert not load_compare_config(None, ["include_tuned_base=false"]).include_tuned_base


def _task(flexible: float, strict: float | None) -> dict:
    metrics = {"exact_match,flexible": flexible, "exact_match_stderr,flexible": 0.1, "alias": "t"}
    if strict is not None:
        metrics["exact_match,strict"] = strict
    return {"metric": "exact_match,flexible", "score": flexible, "metrics": metrics}


def _res2(score: float, *strict: float | None) -> dict:
    """One suite `a` scored `score` (flexible), with a task per strict score."""
    tasks = {f"t{i}": _task(score, v) for i, v in enumerate(strict)}
    return {"suites": {"a": {"score": score, "chance": 0.0, "n": 10, "tasks": tasks}}}


def test_filtered_score_is_the_task_mean_or_none():
    suite = _res2(0.9, 0.2, 0.4)["suites"]["a"]
    assert filtered_score(suite, "strict") == pytest.approx(0.3)
    assert filtered_score(suite, "flexible") == pytest.approx(0.9)
    assert filtered_score(suite, "strict", metric="acc") is None
    assert filtered_score(_res2(0.9, 0.2, None)["suites"]["a"], "strict") is None  # a task lacks it
    assert filtered_score(_res(a=0.5)["suites"]["a"], "strict") is None  # no tasks at all


def test_aggregate_strict_scores_by_hand(tmp_path):
    # flexible (primary) scores stay at 0.9 for the tuned models; strict ones differ per seed
    results = {
        "instruct": {"-": _res2(0.5, 0.4, 0.6)},
        "direct-lora": {"0": _res2(0.9, 0.1, 0.1), "1": _res2(0.9, 0.2, 0.4), "2": _res2(0.9, 0.5, 0.5)},
        "shadow-lora": {"0": _res2(0.9, 0.4, 0.4), "1": _res2(0.9, 0.3, 0.5), "2": _res2(0.9, 0.7, 0.7)},
    }
    info = {
        "instruct": {"kind": "reference"},
        "direct-lora": {"kind": "direct", "baseline": "direct-lora"},
        "shadow-lora": {"kind": "shadow", "baseline": "direct-lora"},
    }
    s = aggregate(results, info, title="t")
    assert s["models"]["direct-lora"]["mean"]["a"] == pytest.approx(0.9)  # the primary scores are untouched
    assert s["paired"]["shadow-lora"]["diff"]["a"] == pytest.approx(0.0)
    st = s["strict"]
    assert st["models"]["instruct"]["mean"]["a"] == pytest.approx(0.5)
    d = st["models"]["direct-lora"]  # per seed 0.1, 0.3, 0.5
    assert d["per_seed"]["1"]["a"] == pytest.approx(0.3)
    assert d["mean"]["a"] == pytest.approx(0.3) and d["std"]["a"] == pytest.approx(0.2)
    assert d["change"]["a"] == pytest.approx(-0.2) and d["mean"]["mean"] == pytest.approx(0.3)
    # paired: 0.4 - 0.1, 0.4 - 0.3, 0.7 - 0.5 = 0.3, 0.1, 0.2 -> mean 0.2, std 0.1 > 2 se (0.115)
    p = st["paired"]["shadow-lora"]
    assert p["vs"] == "direct-lora" and p["diff"]["a"] == pytest.approx(0.2) and p["std"]["a"] == pytest.approx(0.1)
    assert p["se"]["a"] == pytest.approx(0.1 / math.sqrt(3)) and p["beyond_spread"]["a"] is True

    files = write_comparison(s, tmp_path / "cmp")
    md = files["table"].read_text()
    assert "| direct-lora | 3 | 90.0 ± 0.0 (+40.0) |" in md[: md.index(STRICT_TITLE)]
    strict_md = md[md.index(STRICT_TITLE) :]
    assert "| direct-lora | 3 | 30.0 ± 20.0 (-20.0) | 30.0 ± 20.0 (-20.0) |" in strict_md
    assert "| instruct | - | 50.0 | 50.0 |" in strict_md
    assert "### Shadow-FT minus conventional tuning" in strict_md and "**+20.0 ± 10.0**" in strict_md

    # summary.json: floats rounded to 6 decimals (the sums above carry float noise, e.g. 0.19999999999999996)
    def floats(x):
        if isinstance(x, float):
            yield x
        elif isinstance(x, dict | list):
            yield from (f for v in (x.values() if isinstance(x, dict) else x) for f in floats(v))

    assert any(round(f, 6) != f for f in floats(s))
    written = json.loads(files["summary"].read_text())
    assert all(round(f, 6) == f for f in floats(written))
    assert written["strict"]["paired"]["shadow-lora"]["diff"]["a"] == 0.2


def test_no_strict_section_without_strict_metrics():
    results = {
        "instruct": {"-": _res(a=0.5)},
        "direct-lora": {"0": _res(a=0.4)},
        "shadow-lora": {"0": _res2(0.6, None)},  # tasks with flexible metrics only
    }
    info = {"direct-lora": {"kind": "direct"}, "shadow-lora": {"kind": "shadow", "baseline": "direct-lora"}}
    s = aggregate(results, info)
    assert "strict" not in s
    assert STRICT_TITLE not in to_markdown(s) and "Strict" not in to_markdown(s)
    assert s["paired"]["shadow-lora"]["diff"]["a"] == pytest.approx(0.2)


def test_config_examples_and_variants():
    cfg = load_compare_config(EXAMPLES / "compare-toy.yaml")
    names = [v.name for v in cfg.variants()]
    assert names == [
        "direct-lora",
        "shadow-lora",
        "shadow-lora a=auto",
        "direct-full",
        "shadow-full",
        "shadow-full a=auto",
    ]
    assert cfg.run.data.has_validation  # alpha auto needs the held-out split
    swept = load_compare_config(EXAMPLES / "compare-toy.yaml", ["alphas=[0.5, 1.0, 1.5]", "scopes=[projections, all]"])
    assert {"shadow-full a=1.5", "shadow-full scope=all"} <= {v.name for v in swept.variants()}
    assert cfg.train_for("full", 2).lr == 1e-4 and cfg.train_for("lora", 2).seed == 2
    assert load_compare_config(EXAMPLES / "compare-toy-domain.yaml").run.data.sources == ["zoo:domain", "zoo:general"]
    # lr not given: the run's lr for its own method, else the published default
    c = CompareConfig.model_validate({"run": {"train": {"method": "full", "lr": 3e-4}}})
    assert c.lr_for("full") == 3e-4 and c.lr_for("lora") == 2e-4
    with pytest.raises(ShadowFTError, match="alphas"):
        load_compare_config(EXAMPLES / "compare-toy.yaml", ["alphas=[0]"])
    with pytest.raises(ShadowFTError, match="seedz"):
        load_compare_config(None, ["seedz=[1]"])
    # the run's per-module alphas reach every Shadow-FT variant's graft (the alpha sweep sets the default)
    pm = load_compare_config(
        EXAMPLES / "compare-toy.yaml", ["run.graft.alpha_by_module={mlp: 0.5}", "alphas=[0.5, 1.0, 1.5]"]
    )
    grafts = {v.name: v.graft for v in pm.variants() if v.kind == "shadow"}
    assert all(
        g.effective_method == "per_module" and g.method_settings == {"alpha_by_module": {"mlp": 0.5}}
        for g in grafts.values()
    )
    assert grafts["shadow-full a=1.5"].alpha == 1.5


def run_compare(
    cfg: CompareConfig, keys: dict[str, list[str | None]] | None = None
) -> tuple[str, dict[str, list[str]], dict]:
    """Run the comparison flow; return (flow state, {task run name: [state names]}, result). `keys`,
    when given, receives {task run name: [Prefect cache keys]} in the same order."""

    from flows.compare import compare

    state = compare(config=cfg, return_state=True)
    runs = settled_task_runs(state.state_details.flow_run_id)
    states: dict[str, list[str]] = {}
    for r in runs:
        name = "comparison" if r.name.startswith("comparison") else r.name  # uncached: a generated suffix
        states.setdefault(name, []).append(r.state.name)
        if keys is not None:
            keys.setdefault(name, []).append(r.cache_key)
    return state.name, states, (state.result() if state.is_completed() else {})


@pytest.mark.slow
def test_compare_flow_on_tiny_models_then_rerun_is_cached(prefect_env, llama_trio, tmp_path, monkeypatch):
    # a store of its own: the module's shared store may already hold these stages (same tiny trio, same
    # data), which would make the first run Cached and leave "the re-run is cached" proving nothing
    monkeypatch.setenv("SHADOWFT_HOME", str(tmp_path / "store"))
    data = write_dataset(tmp_path / "d.jsonl")
    cfg = load_compare_config(
        None,
        [
            f"run.pair.base={llama_trio['base']}",
            f"run.pair.instruct={llama_trio['instruct']}",
            f"run.data.sources=[{data}]",
            "run.data.max_length=64",
            "run.train.max_steps=3",
            "run.train.batch_size=4",
            "run.eval.suites=[toy-math,toy-reasoning]",
            "run.eval.limit=4",
            "seeds=[0]",
            "alphas=[1.0,0.5]",
            "scopes=[projections,all]",
            "methods=[lora,full]",
            "lr={lora: 1e-3, full: 1e-4}",
        ],
    )
    keys: dict[str, list[str | None]] = {}
    flow_state, states, result = run_compare(cfg, keys)
    assert flow_state == "Completed", states
    # per seed and method: Base and Instruct trained once each
    trains = [n for n in states if n.startswith("train-")]
    assert sorted(trains) == sorted(
        f"train-{r}-{m}-s{s}" for r in ("base", "instruct") for m in ("lora", "full") for s in (0,)
    )
    # a fresh store: every stage computed; Cached only where two stages of this run share one artifact
    # (e.g. the distance of a tuned model that several variants graft): on the build of the other one
    runs = [(n, st, k) for n, sts in states.items() if n != "comparison" for st, k in zip(sts, keys[n])]
    assert {st for _, st, _ in runs} <= {"Completed", "Cached"}, states
    built = {k for _, st, k in runs if st == "Completed"}
    assert built and all(k in built for _, st, k in runs if st == "Cached"), runs
    folder = Path(result["comparison"])
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary["models"]) == [
        "instruct",
        "base",
        "tuned-base-lora",
        "tuned-base-full",
        "direct-lora",
        "shadow-lora",
        "shadow-lora a=0.5",
        "shadow-lora scope=all",
        "direct-full",
        "shadow-full",
        "shadow-full a=0.5",
        "shadow-full scope=all",
    ]
    assert summary["models"]["shadow-full"]["seeds"] == ["0"]
    # with the tuned Base rows (the default), Base is scored as they are: with the chat template where its
    # tokenizer has one (None: decided at evaluation), not as plain text
    assert summary["models"]["base"]["chat_template"] is None
    # the tuned Base, scored as Base is, and the share of its gain each graft carried (per suite)
    assert summary["models"]["tuned-base-full"]["seeds"] == ["0"] and states["evaluate-tuned-base-lora-s0"]
    assert set(summary["carried"]) == set(summary["paired"])
    assert summary["carried"]["shadow-full"]["vs"] == "tuned-base-full"
    assert set(summary["paired"]) == {
        "shadow-lora",
        "shadow-lora a=0.5",
        "shadow-lora scope=all",
        "shadow-full",
        "shadow-full a=0.5",
        "shadow-full scope=all",
    }
    dist = summary["distances"]
    assert dist["direct-full"]["trained"]["mean"] > 0 and dist["shadow-lora"]["trained"]["mean"] > 0
    # conventional tuning: the trained model is the evaluated one
    assert dist["direct-full"]["trained"]["mean"] == pytest.approx(dist["direct-full"]["final"]["mean"])
    # LoRA's graft scope `all` equals `projections` (the adapter only touches projections)
    assert dist["shadow-lora scope=all"]["final"]["mean"] == pytest.approx(dist["shadow-lora"]["final"]["mean"])
    assert (folder / "chart.png").stat().st_size > 1000 and "± " in (folder / "table.md").read_text()

    flow_state, states2, result2 = run_compare(cfg)
    assert flow_state == "Completed"
    assert states2.keys() == states.keys()
    reran = {
        n: sts for n, sts in states2.items() if n not in ("comparison", "embedded_family") and set(sts) != {"Cached"}
    }
    assert not reran, reran
    assert states2["comparison"] == ["Completed"] and result2["comparison"] == result["comparison"]

    # extended by an alpha: only its grafts, evaluations and distances are computed, no training
    flow_state, states3, result3 = run_compare(cfg.model_copy(update={"alphas": [1.0, 0.5, 1.5]}))
    computed = {n for n, sts in states3.items() if "Completed" in sts and n != "comparison"}
    assert computed == {
        f"{t}-shadow-{m}-a1.5-s0" for m in ("lora", "full") for t in ("graft", "evaluate", "sigma-final")
    }, computed
    assert "shadow-full a=1.5" in json.loads((Path(result3["comparison"]) / "summary.json").read_text())["models"]


def test_alpha_auto_variant_needs_a_validation_split():
    cfg = load_compare_config(None, ["alphas=[1.0, auto]", "methods=[lora]"])
    names = {v.name: v for v in cfg.variants()}
    assert list(names) == ["direct-lora", "shadow-lora", "shadow-lora a=auto"]
    auto = names["shadow-lora a=auto"].graft
    assert auto.alpha == "auto" and auto.alpha_grid == cfg.run.graft.alpha_grid
    with pytest.raises(ShadowFTError, match="validation split") as err:
        cfg.check()
    assert "validation_ratio" in (err.value.hint or "")
    load_compare_config(None, ["alphas=[1.0, auto]", "run.data.validation_ratio=0.2"]).check()
    load_compare_config(None, ["alphas=[1.0, 0.5]"]).check()  # no auto: no split needed


def _auto_config(trio, data: Path, *overrides: str) -> CompareConfig:
    return load_compare_config(
        None,
        [
            f"run.pair.base={trio['base']}",
            f"run.pair.instruct={trio['instruct']}",
            f"run.data.sources=[{data}]",
            "run.data.max_length=64",
            "run.data.validation_ratio=0.25",
            "run.train.max_steps=3",
            "run.train.batch_size=4",
            "run.graft.alpha_grid=[0.5, 1.0]",
            "run.eval.suites=[toy-math]",
            "run.eval.limit=4",
            "seeds=[0]",
            "methods=[lora]",
            "alphas=[1.0, 0.5, auto]",
            "lr={lora: 1e-3}",
            "include_base=false",
            "distances=false",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_compare_refuses_alpha_auto_without_validation_before_any_stage(prefect_env, llama_trio, tmp_path):
    cfg = _auto_config(llama_trio, write_dataset(tmp_path / "d.jsonl"), "run.data.validation_ratio=0")
    flow_state, states, _ = run_compare(cfg)
    assert flow_state == "Failed" and states == {}, states
    from flows.compare import compare

    err = compare(config=cfg, return_state=True).result(raise_on_failure=False)
    assert isinstance(err, ShadowFTError) and "run.data has none" in err.message and err.hint


@pytest.mark.slow
def test_compare_alpha_auto_variant_then_rerun_is_cached(prefect_env, llama_trio, tmp_path):
    cfg = _auto_config(llama_trio, write_dataset(tmp_path / "d.jsonl"))
    flow_state, states, result = run_compare(cfg)
    assert flow_state == "Completed", states
    summary = json.loads((Path(result["comparison"]) / "summary.json").read_text())
    models = summary["models"]
    assert list(models) == ["instruct", "direct-lora", "shadow-lora", "shadow-lora a=0.5", "shadow-lora a=auto"]
    chosen = models["shadow-lora a=auto"]["chosen_alpha"]
    assert list(chosen) == ["0"] and chosen["0"] in (0.5, 1.0), chosen
    assert models["shadow-lora a=auto"]["alpha"] == "auto" and "chosen_alpha" not in models["shadow-lora"]
    # the chosen graft is the candidate with that alpha, the same weights as the fixed-alpha variant
    same = "shadow-lora" if chosen["0"] == 1.0 else "shadow-lora a=0.5"
    assert models["shadow-lora a=auto"]["per_seed"]["0"] == models[same]["per_seed"]["0"]
    assert "shadow-lora a=auto" in summary["paired"]
    assert f"| shadow-lora a=auto | seed 0: {chosen['0']:g} |" in (Path(result["comparison"]) / "table.md").read_text()
    # the candidates' stages carry the variant and seed in their names; the selection ran once
    for a in (0.5, 1.0):
        assert states[f"validation-loss-shadow-lora-aauto-s0-alpha-{a}"] == ["Completed"], states
    assert states["select_alpha"] == ["Completed"] and states["graft-shadow-lora-aauto-s0"] == ["Completed"]

    flow_state, states2, result2 = run_compare(cfg)
    assert flow_state == "Completed" and states2.keys() == states.keys()
    reran = {
        n: sts for n, sts in states2.items() if n not in ("comparison", "embedded_family") and set(sts) != {"Cached"}
    }
    assert not reran, reran
    assert result2["comparison"] == result["comparison"]


def test_every_heavy_stage_of_a_comparison_gets_the_runs_resources():
    """`compare` called train / evaluate (and alpha auto's retention evaluations) without `run.resources`,
    so a comparison always ran in one default slot, whatever slots or GPUs the run named (found by
    experiment v3). Each heavy-stage call in the flows must pass them on: the resources argument is the
    task's 6th (train) / 5th (evaluate) positional one, or named."""
    import ast

    flows = Path(__file__).resolve().parents[1] / "flows"
    where = {"train": 6, "evaluate": 5, "graft_with_chosen_alpha": None}
    checked = 0
    for name in ("compare.py", "shadow_ft.py"):
        for node in ast.walk(ast.parse((flows / name).read_text())):
            if not isinstance(node, ast.Call):
                continue
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if fn == "submit" and isinstance(node.func, ast.Attribute):
                fn = getattr(node.func.value, "id", None)
            if fn not in where:
                continue
            checked += 1
            named = any(k.arg == "resources" for k in node.keywords)
            assert named or (where[fn] is not None and len(node.args) >= where[fn]), (
                f"flows/{name}:{node.lineno}: {fn}(...) without the run's resources"
            )
    assert checked >= 12  # the calls were found (train, evaluate, their .submit, alpha auto)
