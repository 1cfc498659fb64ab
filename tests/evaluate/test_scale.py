"""Evaluation at scale: the paper's suites by name, the vLLM backend up to lm-eval's door, resumable
evaluation through lm-eval's request cache. Everything runs the real lm-eval; vLLM itself is not
installed here (a CUDA build), so its tests stop at the arguments lm-eval's `vllm` model receives."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shadowft.config import RunConfig, load_config
from shadowft.errors import EvalError, ShadowFTError
from shadowft.evaluate import evaluate_model, list_suites, load_result
from shadowft.evaluate.backends import BACKENDS, get_backend
from shadowft.evaluate.backends.vllm import VLLMBackend, check_vllm_layout
from shadowft.evaluate.suites import PAPER_SUITES, _lm_eval_index

REPO = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
MISSING_MODEL = Path("/nonexistent/model")


# -- the paper's benchmarks by name ---------------------------------------------------------------


def test_paper_suites_list_the_19_benchmarks_and_say_what_is_missing():
    suites = {s.name: s for s in list_suites()}
    assert {"math", "code", "reasoning", "instruction-following", "coding"} <= set(suites)
    paper = {name: [t.paper for t in suites[name].tasks if t.paper] for name in ("math", "code", "reasoning")}
    counted = {name: len(paper[name]) + len(suites[name].missing) for name in paper}
    assert counted == {"math": 7, "code": 3, "reasoning": 9}  # Math-7, Code-3, Reasoning-9
    assert suites["math"].missing == ["SVAMP"] and suites["code"].missing == ["LiveCodeBench"]
    assert suites["reasoning"].missing == ["TheoremQA"]
    assert [t.name for t in suites["instruction-following"].tasks] == ["ifeval"]
    assert suites["code"].code_execution and not suites["math"].code_execution


@pytest.mark.slow
def test_every_listed_name_is_in_lm_evals_task_index(monkeypatch, tmp_path):
    """Offline: the task index is built from the installed YAMLs; nothing is downloaded."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    index = _lm_eval_index()
    names = [t.name for _, tasks, _, _ in PAPER_SUITES.values() for t in tasks]
    assert len(names) == 18
    assert [n for n in names if n not in index] == []
    assert not (tmp_path / "datasets").exists()  # no data set was fetched or cached


def test_missing_benchmarks_are_not_lm_eval_tasks():
    index = _lm_eval_index()
    for _, _, missing, _ in PAPER_SUITES.values():
        for name in missing:
            assert name.lower() not in index


def test_cli_suites_lists_the_missing_benchmarks():
    out = subprocess.run(
        [sys.executable, "-m", "shadowft", "suites"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250", "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for name in ("SVAMP", "LiveCodeBench", "TheoremQA", "instruction-following", "gpqa_diamond_zeroshot"):
        assert name in out.stdout


# -- the vLLM backend, up to lm-eval's door -------------------------------------------------------


def test_vllm_config_is_keyed_and_validated():
    hf = RunConfig().eval.cache_view()
    assert hf["backend"] == "hf" and "vllm" not in hf  # engine settings only count for their engine
    a = load_config(None, ["eval.backend=vllm"]).eval.cache_view()
    b = load_config(
        None, ["eval.backend=vllm", "eval.vllm.tensor_parallel_size=2", "resources.devices_per_stage=2"]
    ).eval.cache_view()
    assert a["backend"] == "vllm" and a != b and a != hf
    with pytest.raises(ShadowFTError, match=r"eval.vllm.gpu_memory_utilization: must be at most 1"):
        load_config(None, ["eval.backend=vllm", "eval.vllm.gpu_memory_utilization=1.5"])
    with pytest.raises(
        ShadowFTError, match=r"eval.backend: unknown evaluation backend 'lmdeploy'; known .*: hf, .*vllm"
    ):
        load_config(None, ["eval.backend=lmdeploy"])
    with pytest.raises(ShadowFTError, match=r"needs 2 GPUs per evaluation .* resources.devices_per_stage is 1"):
        load_config(None, ["eval.backend=vllm", "eval.vllm.tensor_parallel_size=2"])
    ok = load_config(None, ["eval.backend=vllm", "eval.vllm.data_parallel_size=2", "resources.devices_per_stage=2"])
    assert VLLMBackend.devices(ok.eval.backend_settings) == 2


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed: the refusal of a missing vLLM cannot be shown here")
def test_vllm_is_refused_in_preflight_without_vllm(tmp_path):
    assert {"hf", "vllm"} <= set(BACKENDS)
    from shadowft.stages import preflight

    with pytest.raises(EvalError) as err:
        preflight(load_config(None, ["eval.backend=vllm"]))
    assert "vLLM is not installed" in str(err.value)
    assert "shadowft[vllm]" in err.value.hint and "eval.backend=hf" in err.value.hint
    with pytest.raises(EvalError, match="vLLM is not installed"):  # and by the stage itself, before the model
        evaluate_model(MISSING_MODEL, ["toy-math"], tmp_path, backend="vllm")


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here (a CUDA build)")
def test_installed_vllm_is_not_refused_as_missing():
    """Where vLLM is installed (GPU machines, as the README recommends) preflight gets past the
    package check: it passes, or refuses for the GPUs, never for a missing vLLM."""
    from shadowft.stages import preflight

    try:
        preflight(load_config(None, ["eval.backend=vllm"]))
    except EvalError as err:
        assert "not installed" not in str(err) and "GPU" in str(err), err


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed: the refusal of a missing vLLM cannot be shown here")
def test_vllm_run_fails_before_any_stage_with_a_message_not_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "SHADOWFT_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shadowft",
            "run",
            str(REPO / "examples" / "toy.yaml"),
            "--set",
            "eval.backend=vllm",
            "--set",
            f"output.root={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "vLLM is not installed" in text and "shadowft[vllm]" in text
    assert "Traceback" not in text
    assert not (tmp_path / "home" / "artifacts").exists()  # no stage ran


def _vllm_init_params() -> set[str]:
    """Parameter names of lm-eval's VLLM.__init__, read from the installed source (importing the
    module needs vLLM)."""
    import lm_eval

    src = Path(lm_eval.__file__).parent / "models" / "vllm_causallms.py"
    tree = ast.parse(src.read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "VLLM")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}


def test_vllm_model_args_are_what_lm_evals_vllm_model_takes(tmp_path):
    backend = get_backend(
        "vllm", tensor_parallel_size=2, data_parallel_size=2, gpu_memory_utilization=0.8, max_model_len=4096
    )
    assert isinstance(backend, VLLMBackend) and backend.devices(backend.config) == 4
    args = backend.model_args(tmp_path, batch_size="auto", dtype="bf16", trust_remote_code=False, enable_thinking=False)
    assert args == {
        "pretrained": str(tmp_path),
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
        "data_parallel_size": 2,
        "gpu_memory_utilization": 0.8,
        "max_model_len": 4096,
        "trust_remote_code": False,
        "batch_size": "auto",
        "seed": 1234,
        "enable_thinking": False,
    }
    params = _vllm_init_params()
    # gpu_memory_utilization is a vLLM engine argument: lm-eval passes its **kwargs on to vllm.LLM.
    assert set(args) - params == {"gpu_memory_utilization"}
    thinking = backend.model_args(tmp_path, batch_size=8, dtype="auto", trust_remote_code=False, enable_thinking=True)
    assert thinking["think_end_token"] == "</think>" and "think_end_token" in params
    assert "max_model_len" not in get_backend("vllm").model_args(
        tmp_path, batch_size=1, dtype="auto", trust_remote_code=False
    )
    with pytest.raises(EvalError, match="bad vllm setting.*tensor_parallel: unknown setting"):
        get_backend("vllm", tensor_parallel=2)


def test_grafted_model_dir_has_the_layout_vllm_reads(zoo_family, tmp_path):
    """A real Shadow-FT graft (a LoRA adapter trained on Base, merged into Instruct) checked file by file."""
    import shutil

    from shadowft.config import DataConfig, TrainConfig
    from shadowft.data import prepare_dataset
    from shadowft.graft import graft
    from shadowft.train import train_model

    instruct = zoo_family.root / "instruct"
    assert check_vllm_layout(instruct) == []
    prepare_dataset(
        DataConfig(sources=[str(zoo_family.root / "data" / "domain.jsonl")], max_samples=8, max_length=64),
        instruct,
        tmp_path / "data",
    )
    train_model(
        zoo_family.root / "base",
        tmp_path / "data",
        TrainConfig(max_steps=1, batch_size=2, grad_accum=1),
        tmp_path / "adapter",
        tmp_path / "work",
    )
    graft(instruct, tmp_path / "graft", adapter=tmp_path / "adapter")
    assert check_vllm_layout(tmp_path / "graft", reference=instruct) == []

    # What vLLM would reject or misread is named.
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "graft", bad)
    shutil.copy(tmp_path / "adapter" / "adapter_model.safetensors", bad)
    (bad / "generation_config.json").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"x")
    problems = " | ".join(check_vllm_layout(bad, reference=instruct))
    assert "adapter_model.safetensors" in problems and "vLLM loads them all" in problems
    assert "generation_config.json" in problems and "pytorch_model.bin" in problems


def test_backend_settings_and_chat_options_are_recorded(llama_trio, tmp_path):
    res = evaluate_model(
        llama_trio["instruct"], ["toy-math"], tmp_path, limit=2, enable_thinking=False, fewshot_as_multiturn=True
    )
    saved = load_result(tmp_path / "results.json")
    assert saved.backend == "hf" and saved.backend_settings == {}
    assert saved.enable_thinking is False and saved.fewshot_as_multiturn is res.chat_template
    assert saved.request_cache is False


def test_evaluation_threads_default_to_one_for_small_models_and_are_restored(llama_trio, tmp_path, monkeypatch):
    """Evaluation gets training's thread default (a tiny model on 1 thread does not collapse beside a
    busy neighbour); an explicit count is used and recorded; neither is in the stage's cache key."""
    import torch

    before = torch.get_num_threads()
    seen: list[int] = []
    from lm_eval import evaluator

    real = evaluator.simple_evaluate

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluator, "simple_evaluate", spy)  # observes the thread count; runs the real one
    # The caller runs on 3 threads first: the suite's OMP_NUM_THREADS=1 would make "1 by default" and
    # "restored" hold even if evaluation never set or restored the count.
    torch.set_num_threads(3)
    try:
        default = evaluate_model(llama_trio["instruct"], ["toy-math"], tmp_path / "a", limit=2)
        assert torch.get_num_threads() == 3
        explicit = evaluate_model(llama_trio["instruct"], ["toy-math"], tmp_path / "b", limit=2, threads=2)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2]
    assert default.threads == 1 and load_result(tmp_path / "b" / "results.json").threads == 2
    assert explicit.suites["toy-math"].score == default.suites["toy-math"].score
    assert load_config(None, ["eval.threads=2"]).eval.cache_view() == RunConfig().eval.cache_view()


# -- resumable evaluation -------------------------------------------------------------------------

_CHILD = """
import sys
from pathlib import Path
from shadowft.evaluate import evaluate_model
evaluate_model(Path(sys.argv[1]), ["toy-math"], Path(sys.argv[2]), batch_size=1, cache_dir=Path(sys.argv[3]))
"""


def _cached_rows(cache_dir: Path, *, while_writing: bool = True) -> int:
    """Rows in the request cache. After a SIGKILL mid-transaction the journal is hot: only a writable
    connection rolls it back (as the resumed evaluation's does); a read-only one fails to open."""
    dbs = list(cache_dir.glob("*.db"))
    if not dbs:
        return 0
    if not while_writing:
        with sqlite3.connect(dbs[0], timeout=30) as con:
            return int(con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
    try:
        with sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
    except sqlite3.Error:
        return 0


class _Counter:
    """Counts the requests that reach the real model (wraps HFLM's entry points, calls them)."""

    def __init__(self, monkeypatch):
        from lm_eval.models.huggingface import HFLM

        self.calls: dict[str, int] = {}
        for name in ("generate_until", "loglikelihood"):
            real = getattr(HFLM, name)

            def wrapped(lm, requests, *a, _real=real, _name=name, **kw):
                self.calls[_name] = self.calls.get(_name, 0) + len(requests)
                return _real(lm, requests, *a, **kw)

            monkeypatch.setattr(HFLM, name, wrapped)


@pytest.mark.slow
def test_killed_evaluation_resumes_from_the_request_cache(zoo_family, tmp_path, monkeypatch):
    model = zoo_family.root / "instruct"
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(model), str(tmp_path / "killed"), str(cache)], env=env)
    try:
        deadline = time.monotonic() + 300
        while _cached_rows(cache) < 40:
            assert proc.poll() is None, "the evaluation ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    done = _cached_rows(cache, while_writing=False)
    assert 40 <= done < 200

    counter = _Counter(monkeypatch)
    resumed = evaluate_model(model, ["toy-math"], tmp_path / "resumed", batch_size=1, cache_dir=cache)
    assert counter.calls == {"generate_until": 200 - done}  # only what was left reached the model
    assert resumed.request_cache and resumed.suites["toy-math"].n == 200

    fresh = _Counter(monkeypatch)
    full = evaluate_model(model, ["toy-math"], tmp_path / "full", batch_size=1)
    assert fresh.calls == {"generate_until": 200}
    assert resumed.suites["toy-math"].score == full.suites["toy-math"].score
    assert resumed.suites["toy-math"].tasks == full.suites["toy-math"].tasks
    rows = lambda d: [json.loads(x)["filtered_resps"] for x in (d / "samples_toy_math.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "resumed") == rows(tmp_path / "full")


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_pickle_planted_in_the_request_cache_never_runs(llama_trio, tmp_path, monkeypatch):
    """Issue 22 item 7: a cache file on shared storage is writable by others. Answers are JSON rows;
    a pickle carrying code, planted for every key in our table and in lm-eval's own `requests-*.db`
    (a sqlitedict), is never unpickled: each such row is a miss, answered by the model again."""
    import pickle

    model = llama_trio["instruct"]
    clean = tmp_path / "clean"
    first = evaluate_model(model, ["toy-math"], tmp_path / "a", limit=3, cache_dir=clean)
    (db,) = clean.glob("*.db")
    with sqlite3.connect(db) as con:
        keys = [k for (k,) in con.execute("SELECT key FROM answers")]
        assert len(keys) == 3 and all(
            isinstance(json.loads(v), str) for (v,) in con.execute("SELECT value FROM answers")
        )

    marker = tmp_path / "marker"
    poison = pickle.dumps(_Payload(marker))
    cache = tmp_path / "poisoned"
    cache.mkdir()
    for name, table in ((db.name, "answers"), ("requests-0_rank0.db", "unnamed")):  # ours, and lm-eval's
        with sqlite3.connect(cache / name) as con:
            con.execute(f"CREATE TABLE {table} (key TEXT PRIMARY KEY, value BLOB)")
            con.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(k, poison) for k in keys])
    with sqlite3.connect(cache / db.name) as con:  # also as text, and as JSON of the wrong shape
        con.execute("UPDATE answers SET value = ? WHERE key = ?", (poison.decode("latin-1"), keys[1]))
        con.execute("UPDATE answers SET value = ? WHERE key = ?", ('{"py/object": "os.system"}', keys[2]))
    pickle.loads(poison)  # the payload works: unpickled, it writes the marker
    assert marker.read_text() == "pwned"
    marker.unlink()

    counter = _Counter(monkeypatch)
    resumed = evaluate_model(model, ["toy-math"], tmp_path / "b", limit=3, cache_dir=cache)
    assert not marker.exists()
    assert counter.calls == {"generate_until": 3}  # no planted row answered a request
    assert resumed.suites["toy-math"].tasks == first.suites["toy-math"].tasks
    with sqlite3.connect(cache / db.name) as con:  # the planted rows were replaced by the answers
        assert all(isinstance(json.loads(v), str) for (v,) in con.execute("SELECT value FROM answers"))

    again = _Counter(monkeypatch)
    evaluate_model(model, ["toy-math"], tmp_path / "c", limit=3, cache_dir=cache)
    assert again.calls == {}  # and they now answer a re-run
    assert not marker.exists()


def test_report_says_when_backends_are_mixed(llama_trio, tmp_path):
    from shadowft.report import write_report

    evaluate_model(llama_trio["instruct"], ["toy-math"], tmp_path / "e", limit=2)
    hf = json.loads((tmp_path / "e" / "results.json").read_text())
    same = write_report({"instruct": hf, "shadow-ft": hf}, tmp_path / "same")
    assert same["backends"] == {"instruct": "hf", "shadow-ft": "hf"}
    assert "Mixed evaluation backends" not in (tmp_path / "same" / "report.md").read_text()
    other = {**hf, "backend": "vllm"}  # the same schema as a vllm run writes
    write_report({"instruct": hf, "shadow-ft": other}, tmp_path / "mixed")
    text = (tmp_path / "mixed" / "report.md").read_text()
    assert "Mixed evaluation backends" in text and "shadow-ft: vllm" in text
