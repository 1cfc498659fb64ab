"""deployments/prefect.yaml, the flow's parameter schema, and the run history of the report stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_deployment_run_overrides_change_only_what_they_name(tmp_path, llama_trio):
    """`prefect deployment run shadow-ft/manual -p overrides=[...]` on a real server, pool and worker
    (`shadowft serve`): the run's config is the deployment's own with only the named keys changed, and
    its first log line says so."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.test_pipeline import write_dataset

    data = write_dataset(tmp_path / "train.jsonl")
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        f"pair: {{base: '{llama_trio['base']}', instruct: '{llama_trio['instruct']}'}}\n"
        f"data: {{sources: ['{data}'], max_length: 64}}\n"
        "train: {max_steps: 2, batch_size: 4, save_steps: 2}\n"
        "eval: {suites: [toy-math], limit: 2}\n"
        "baselines: [instruct]\n"
        f"output: {{root: '{tmp_path / 'runs'}', name: tiny}}\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        SHADOWFT_HOME=str(tmp_path / "store"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
    )
    log = tmp_path / "serve.out"
    serve = subprocess.Popen(
        [sys.executable, "-m", "shadowft", "serve", "--port", str(port), "--prefect-home", str(tmp_path / "prefect")]
        + ["--config", str(tiny), "--nightly-data", str(data), "--log-dir", str(tmp_path / "logs")],
        cwd=REPO,
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 (the child holds it)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def api(path: str, body: dict | None = None):
        req = urllib.request.Request(
            f"{base}/api{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        deadline = time.monotonic() + 300
        while "Prefect UI:" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        started = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", "shadow-ft/manual"]
            + ["-p", 'overrides=["train.seed=7", "eval.limit=3"]'],
            cwd=REPO,
            env={**env, "PREFECT_API_URL": f"{base}/api"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stdout + started.stderr
        manual = api("/deployments/name/shadow-ft/manual")
        (run,) = api("/flow_runs/filter", {"deployments": {"id": {"any_": [manual["id"]]}}})
        deadline = time.monotonic() + 480
        while (state := api(f"/flow_runs/{run['id']}")["state"]["type"]) not in ("COMPLETED", "FAILED", "CRASHED"):
            assert time.monotonic() < deadline, f"the flow run is still {state}"
            time.sleep(2)
        logs = api("/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "sort": "TIMESTAMP_ASC"})
        messages = [entry["message"] for entry in logs]
        assert state == "COMPLETED", "\n".join(messages[-30:])
        (report,) = api(
            "/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [run["id"]]}, "key": {"any_": ["shadow-ft-report"]}}},
        )
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGINT)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()

    # the config the run used: the deployment's own, with only the two named keys changed
    deployed = RunConfig.model_validate(manual["parameters"]["config"])
    assert deployed == load_config(tiny)
    used = load_config(tmp_path / "runs" / "tiny" / "latest" / "config.yaml")
    assert used.train.seed == 7 and used.eval.limit == 3
    assert used.model_copy(update={"train": deployed.train, "eval": deployed.eval}) == deployed
    assert used.train.model_copy(update={"seed": deployed.train.seed}) == deployed.train
    assert used.eval.model_copy(update={"limit": deployed.eval.limit}) == deployed.eval
    # the report's chart link is a plain markdown link (a code span in its text showed literal backticks)
    assert "Chart: [" in report["data"] and "[`" not in report["data"]
    # the flow's first own log line says where the config came from, before any stage ran
    # (the worker's and Prefect's own start-up lines come first: the flow's own start after "Beginning flow run")
    begin = next(i for i, e in enumerate(logs) if e["message"].startswith("Beginning flow run"))
    own = [e for e in logs[begin + 1 :] if e["task_run_id"] is None and not e["message"].startswith("View at")]
    first_task = min(e["timestamp"] for e in logs if e["task_run_id"] is not None)
    said = [(e["name"], e["message"]) for e in logs[begin : begin + 4]]
    assert own[0]["message"] == "config: the defaults of deployment 'manual'; overrides: train.seed=7, eval.limit=3", (
        said
    )
    assert own[0]["timestamp"] < first_task, said
