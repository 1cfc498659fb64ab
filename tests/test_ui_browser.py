"""The Prefect UI end to end, in a real browser: `shadowft serve` (server, work pool, deployments,
worker), a custom run of `shadow-ft/manual` started from the deployment's form, its results table in
the UI, and the nightly deployment's schedule with runs the scheduler has created.

Debian's chromium driven by Playwright (no browser download). The deployments' defaults point at
tiny models (`shadowft serve --config`) so that the flow run takes seconds, not the minutes the
embedded family needs to build. Screenshots go to test-output/ui/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_pipeline import write_dataset

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "test-output" / "ui"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        f"{base}/api{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def flow_runs(base: str, deployment_id: str, states: list[str] | None = None) -> list[dict]:
    body: dict = {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 50}
    if states:
        body["flow_runs"] = {"state": {"type": {"any_": states}}}
    return api(base, "/flow_runs/filter", body)


@pytest.fixture
def served(tmp_path, llama_trio):
    """`shadowft serve` in temporary homes, on a free port, its deployments' defaults on tiny models."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    pytest.importorskip("playwright")
    data = write_dataset(tmp_path / "train.jsonl")
    nightly = write_dataset(tmp_path / "nightly.jsonl", offset=1)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"pair: {{base: '{llama_trio['base']}', instruct: '{llama_trio['instruct']}'}}\n"
        f"data: {{sources: ['{data}'], max_length: 64}}\n"
        "train: {max_steps: 4, batch_size: 4, save_steps: 2}\n"
        "eval: {suites: [toy-math, toy-reasoning], limit: 4}\n"
        "baselines: [instruct]\n"
        f"output: {{root: '{tmp_path / 'runs'}', name: tiny}}\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(SHADOWFT_HOME=str(tmp_path / "store"), PREFECT_WORKER_QUERY_SECONDS="1", PYTHONUNBUFFERED="1")
    log = tmp_path / "serve.out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shadowft",
            "serve",
            "--port",
            str(port),
            "--prefect-home",
            str(tmp_path / "prefect"),
            "--config",
            str(config),
            "--nightly-data",
            str(nightly),
            "--log-dir",
            str(tmp_path / "logs"),
        ],
        cwd=REPO,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while "Prefect UI:" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "serve did not come up:\n" + log.read_text()
            time.sleep(0.5)
        yield {"base": base, "tmp": tmp_path, "proc": proc}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for name in ("serve.out", "logs/worker.log", "logs/server.log"):
            p = tmp_path / name
            if p.exists():
                SHOTS.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, SHOTS / Path(name).name)


def _properties(schema: dict):
    """(definition, field, property) for every field of every model in a parameter schema."""
    for name, model in schema["definitions"].items():
        for field, prop in model.get("properties", {}).items():
            yield name, field, prop


def test_every_setting_renders_with_its_description_and_range(served):
    """The implementations' own settings (built from the registries: eval.vllm, train.accelerate,
    train.dpo, graft methods') reach the form like the sections' fields: described, bounded, and
    validated before a run exists."""
    from playwright.sync_api import expect, sync_playwright

    base, tmp = served["base"], served["tmp"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    manual = api(base, "/deployments/name/shadow-ft/manual")
    schema = manual["parameter_openapi_schema"]
    undescribed = [f"{m}.{f}" for m, f, p in _properties(schema) if not p.get("description")]
    assert undescribed == []
    defs = schema["definitions"]
    evals, train = defs["EvalConfig"]["properties"], defs["TrainConfig"]["properties"]
    assert {"hf", "vllm"} <= set(evals["backend"]["enum"]) and "accelerate" in train["launcher"]["enum"]
    assert "used with eval.backend: vllm" in evals["vllm"]["description"]
    vllm = defs[evals["vllm"]["$ref"].split("/")[-1]]["properties"]
    assert vllm["gpu_memory_utilization"]["maximum"] == 1 and vllm["tensor_parallel_size"]["minimum"] == 1
    assert "config" in defs[train["accelerate"]["$ref"].split("/")[-1]]["properties"]

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(f"{base}/deployments")
        page.get_by_role("link", name="manual", exact=True).first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run", exact=True).click()
        page.wait_for_url(re.compile(r"/run\?"))
        for text in (
            "used with eval.backend: vllm",  # the sub-section, described by its backend
            "GPUs one model replica is split over.",  # its fields, described
            "Fraction of each GPU's memory vLLM may take.",
            "used with train.launcher: accelerate",
        ):
            expect(page.get_by_text(text, exact=False).first).to_be_attached(timeout=30_000)
        prop = page.locator(
            ".schema-form-property",
            has=page.locator(
                ".schema-form-property__label", has_text=re.compile(r"^Gpu Memory Utilization( \(Optional\))?$")
            ),
        )
        # the innermost property with that label: eval.vllm_vlm's, the last of the two engines that have it
        gpu_memory = prop.last.locator("input").first
        gpu_memory.scroll_into_view_if_needed()
        expect(gpu_memory).to_have_value("0.9", timeout=30_000)  # the settings' default
        page.screenshot(path=str(SHOTS / "run-form-vllm.png"))
        gpu_memory.fill("1.5")  # its range reaches the form: refused before any run exists
        page.get_by_role("button", name="Submit").click()
        refused = page.get_by_text(re.compile(r"config\.eval\.vllm(_vlm)?\.gpu_memory_utilization.*maximum"))
        expect(refused.first).to_be_visible(timeout=30_000)
        assert flow_runs(base, manual["id"]) == []
        page.screenshot(path=str(SHOTS / "run-form-vllm-invalid.png"))
        browser.close()


def test_custom_run_from_the_form_and_nightly_schedule(served):
    from playwright.sync_api import expect, sync_playwright

    base, tmp = served["base"], served["tmp"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    manual = api(base, "/deployments/name/shadow-ft/manual")
    schema = manual["parameter_openapi_schema"]
    train_schema = schema["definitions"]["TrainConfig"]["properties"]
    assert train_schema["warmup_ratio"]["exclusiveMaximum"] == 1 and train_schema["seed"]["description"]
    assert manual["enforce_parameter_schema"] is True

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        page = browser.new_page()
        page.set_default_timeout(30_000)

        def field(label: str, described: str | None = None):
            """The input of the innermost form property labelled `label` (and showing `described`, where
            several sections have a field of that name: train.seed and graft.dare.seed)."""
            prop = page.locator(
                ".schema-form-property",
                has=page.locator(".schema-form-property__label", has_text=re.compile(rf"^{label}( \(Optional\))?$")),
            )
            if described:
                prop = prop.filter(has_text=described)
            return prop.last.locator("input").first

        page.goto(f"{base}/deployments")
        page.get_by_role("link", name="manual", exact=True).first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run", exact=True).click()
        page.wait_for_url(re.compile(r"/run\?"))
        expect(page.get_by_text("Peak learning rate; empty = the default for the method")).to_be_visible()
        page.screenshot(path=str(SHOTS / "run-form.png"))

        # an invalid value is refused before any run exists
        warmup = field("Warmup Ratio")
        warmup.fill("5")
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_text(re.compile(r"warmup_ratio.*maximum")).first).to_be_visible()
        assert flow_runs(base, manual["id"]) == []
        page.screenshot(path=str(SHOTS / "run-form-invalid.png"))
        warmup.fill("0.1")

        # one changed value: the seed
        seed = field("Seed", described="Seed for initialisation, data order and dropout")
        seed.scroll_into_view_if_needed()
        seed.fill("7")
        page.get_by_role("button", name="Submit").click()
        deadline = time.monotonic() + 90  # a loaded machine; the run appears in about a second when quiet
        while not (runs := flow_runs(base, manual["id"])):
            if time.monotonic() > deadline:
                page.screenshot(path=str(SHOTS / "run-form-not-submitted.png"), full_page=True)
                raise AssertionError(f"no flow run was created (screenshot: {SHOTS / 'run-form-not-submitted.png'})")
            time.sleep(0.5)
        (run,) = runs
        assert run["parameters"]["config"]["train"]["seed"] == 7

        deadline = time.monotonic() + 240
        while (state := api(base, f"/flow_runs/{run['id']}")["state"]["type"]) not in (
            "COMPLETED",
            "FAILED",
            "CRASHED",
            "CANCELLED",
        ):
            assert time.monotonic() < deadline, f"the flow run is still {state}"
            time.sleep(2)
        assert state == "COMPLETED", (tmp / "logs" / "worker.log").read_text()[-5000:]

        # the flow run's page: its artifacts, the results table with the grafted model's row
        page.goto(f"{base}/runs/flow-run/{run['id']}")
        expect(page.get_by_text("Completed").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "flow-run.png"))
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("shadow-ft-results", exact=True).first.click()
        for model in ("shadow-ft", "instruct"):  # the grafted model's row, and the reference
            expect(page.get_by_role("cell").filter(has_text=re.compile(rf"^\s*{model}\s*$"))).to_be_visible()
        page.screenshot(path=str(SHOTS / "results.png"), full_page=True)

        # the markdown report: the table, the comparison with the previous run, the chart inline
        page.goto(f"{base}/runs/flow-run/{run['id']}")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("shadow-ft-report", exact=True).first.click()
        expect(page.get_by_text("vs previous run").first).to_be_visible()
        chart = page.locator("img[src^='data:image/png']").first
        expect(chart).to_be_visible()
        assert chart.evaluate("img => img.naturalWidth") > 100
        page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
        browser.close()

    # the nightly deployment: a cron schedule in a time zone, and runs the scheduler created
    nightly = api(base, "/deployments/name/shadow-ft/nightly")
    (schedule,) = nightly["schedules"]
    assert schedule["active"] and schedule["schedule"]["cron"] and schedule["schedule"]["timezone"]
    assert nightly["parameters"]["config"]["data"]["sources"] == [str(tmp / "nightly.jsonl")]
    deadline = time.monotonic() + 30
    while not flow_runs(base, nightly["id"], ["SCHEDULED"]):
        assert time.monotonic() < deadline, "the scheduler created no nightly run"
        time.sleep(1)

    # Ctrl-C stops everything serve started
    proc = served["proc"]
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(180) == 0  # serve gives the worker, then the server, a grace period each
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/api/health", timeout=2)
