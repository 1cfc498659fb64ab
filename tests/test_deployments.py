"""deployments/prefect.yaml, the flow's parameter schema, and the run history of the report stage."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from shadowft.config import RunConfig, load_config
from shadowft.report import compare_markdown, history_path, read_history, record_run

REPO = Path(__file__).resolve().parent.parent


def deployments() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def test_manual_deployment_defaults_are_examples_toy_yaml():
    manual = deployments()["manual"]
    assert manual["entrypoint"] == "flows/shadow_ft.py:shadow_ft"
    assert manual["work_pool"]["name"] == "shadowft-process"
    toy = load_config(REPO / "examples" / "toy.yaml")
    assert RunConfig.model_validate(manual["parameters"]["config"]) == toy


def test_nightly_deployment_reads_the_configured_path_on_a_schedule():
    nightly = deployments()["nightly"]
    (schedule,) = nightly["schedules"]
    minute, hour, *_ = schedule["cron"].split()
    assert 0 <= int(hour) <= 5 and schedule["timezone"]  # at night, in a named time zone
    cfg = nightly["parameters"]["config"]
    assert cfg["data"]["sources"] == ["{{ $SHADOWFT_NIGHTLY_DATA }}"]
    assert cfg["output"]["name"] == "nightly"
    cfg["data"]["sources"] = ["/data/today.jsonl"]
    resolved = RunConfig.model_validate(cfg)
    toy = load_config(REPO / "examples" / "toy.yaml")
    assert resolved.train == toy.train and resolved.eval == toy.eval and resolved.pair == toy.pair


def test_parameter_schema_has_descriptions_defaults_and_constraints():
    from prefect.utilities.callables import parameter_schema

    from flows.shadow_ft import shadow_ft

    schema = parameter_schema(shadow_ft).model_dump_for_openapi()
    defs = schema["definitions"]
    default = schema["properties"]["config"]["default"]  # the form starts from it: every value
    assert RunConfig.model_validate(default) == RunConfig()
    for key, section in [
        ("pair", "PairConfig"),
        ("data", "DataConfig"),
        ("train", "TrainConfig"),
        ("graft", "GraftConfig"),
        ("eval", "EvalConfig"),
        ("output", "OutputConfig"),
    ]:
        assert defs["RunConfig"]["properties"][key]["description"]
        for name, prop in defs[section]["properties"].items():
            assert prop.get("description"), f"{section}.{name} has no description"
            assert name in default[key], f"{section}.{name} has no default"
    train = defs["TrainConfig"]["properties"]
    assert train["warmup_ratio"]["minimum"] == 0 and train["warmup_ratio"]["exclusiveMaximum"] == 1
    assert train["method"]["enum"] == ["lora", "full"]
    assert defs["GraftConfig"]["properties"]["alpha"]["maximum"] == 10


def test_history_records_each_run_once_and_compares_with_the_previous(tmp_path):
    path = history_path(tmp_path, "nightly run/1")
    assert path == tmp_path / "runs" / "nightly-run-1" / "history.jsonl"
    s1 = {
        "suites": ["math"],
        "scores": {"instruct": {"math": 0.5, "mean": 0.5}, "shadow-ft": {"math": 0.6, "mean": 0.6}},
    }
    s2 = {
        "suites": ["math"],
        "scores": {"instruct": {"math": 0.5, "mean": 0.5}, "shadow-ft": {"math": 0.7, "mean": 0.7}},
    }
    assert record_run(path, s1, "run-1", run_name="first", report_key="k1") is None
    assert "First run" in compare_markdown(s1, None)
    prev = record_run(path, s2, "run-2", run_name="second", report_key="k2")
    assert prev["run_name"] == "first"
    assert record_run(path, s2, "run-2", run_name="second", report_key="k2")["run_name"] == "first"  # a retry
    assert [e["run_id"] for e in read_history(path)] == ["run-1", "run-2"]
    md = compare_markdown(s2, prev, "k2")
    assert "vs previous run" in md and "`first`" in md
    assert "| shadow-ft | 70.0 (+10.0) | 70.0 (+10.0) |" in md
    assert "same inputs" in compare_markdown(s2, record_run(path, s2, "run-3", report_key="k2"), "k2")
    with open(path, "a") as f:
        f.write('{"torn')  # a crashed writer's partial line is skipped
    assert len(read_history(path)) == 3
    assert json.loads(path.read_text().splitlines()[0])["scores"] == s1["scores"]
