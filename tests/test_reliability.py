"""Reliability and security, end to end: bad input through the CLI and Prefect, crashes (SIGKILL and a
full disk), concurrency, the store check, secrets. The table in docs/RELIABILITY.md names these tests
(and the library-level tests they build on); `test_reliability_doc_names_existing_tests` keeps it true.
"""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from shadowft.store import ArtifactStore
from tests.helpers import copy_dir, resize_vocab, settled_task_runs
from tests.test_pipeline import make_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
SHADOWFT = [sys.executable, "-m", "shadowft"]
SENTINEL = "hf_secret-sentinel-3f9a"


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture()
def store_home(tmp_path, monkeypatch) -> Path:
    """This test's own store, for in-process flow runs."""
    monkeypatch.setenv("SHADOWFT_HOME", str(tmp_path / "store"))
    return tmp_path / "store"


@pytest.fixture(scope="module")
def bad_models(llama_trio, tmp_path_factory) -> dict[str, Path]:
    """Base models that must be refused beside llama_trio's Instruct (one per kind of bad input)."""
    from shadowft.tiny import make_trio

    root = tmp_path_factory.mktemp("bad-models")
    out: dict[str, Path] = {}
    out["arch"] = make_trio(root / "qwen", arch="qwen3")["base"]
    out["shapes"] = make_trio(root / "wide", arch="llama", hidden_size=48)["base"]
    out["unrelated"] = make_trio(root / "other", arch="llama", seed=5)["instruct"]
    out["vocab"] = resize_vocab(llama_trio["base"], root / "vocab", 5)
    out["truncated"] = copy_dir(llama_trio["base"], root / "truncated")
    f = out["truncated"] / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    sharded = make_trio(root / "sharded", arch="llama", max_shard_size="20KB")["base"]  # same weights, sharded
    victim = sorted(sharded.glob("*.safetensors"))[-1]
    victim.unlink()
    out["missing_shard"] = sharded
    out["pickled"] = root / "pickled"
    out["pickled"].mkdir()
    shutil.copy(llama_trio["base"] / "config.json", out["pickled"])
    import torch

    torch.save(load_file(llama_trio["base"] / "model.safetensors"), out["pickled"] / "pytorch_model.bin")
    out["remote_code"] = copy_dir(llama_trio["base"], root / "remote")
    cfg = json.loads((out["remote_code"] / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (out["remote_code"] / "config.json").write_text(json.dumps(cfg))
    return out


def _rows_file(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for i, text in (raw_lines or {}).items():
        lines.insert(i, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def _good(q: str = "1 + 1", a: str = "2") -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def _data(kind: str, tmp_path: Path) -> Path:
    if kind == "empty":
        (tmp_path / "empty.jsonl").write_text("\n")
        return tmp_path / "empty.jsonl"
    if kind == "bad_json":
        return _rows_file(tmp_path / "bad.jsonl", [_good(), _good()], {2: '{"messages": [ oops'})
    if kind == "bad_rows":
        return _rows_file(
            tmp_path / "rows.jsonl",
            [
                _good(),
                {"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]},
                {"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]},
            ],
        )
    return write_dataset(tmp_path / "d.jsonl")


# -- bad input through Prefect: a failed task (or flow) with the message, nothing published ----------
# (case, base model (key of bad_models or None = llama base), data kind, overrides, failing task, message)
PREFECT_CASES = [
    ("different-architectures", "arch", "ok", [], "check_pair", "config field model_type differs"),
    ("different-shapes", "shapes", "ok", [], "check_pair", "config field hidden_size differs"),
    (
        "different-vocab-scope-all",
        "vocab",
        "ok",
        ["graft.scope=all"],
        "check_pair",
        "tensor model.embed_tokens.weight has shape",
    ),
    ("unrelated-models", "unrelated", "ok", [], "check_pair", "is above the threshold 0.15"),
    ("truncated-shard", "truncated", "ok", [], "check_pair", "is truncated: its header promises"),
    ("shard-missing-from-index", "missing_shard", "ok", [], "check_pair", "names shard(s) that are missing"),
    ("pickled-weights", "pickled", "ok", [], "check_pair", "are pickled (.bin); shadowft never unpickles weights"),
    ("needs-trust-remote-code", "remote_code", "ok", [], "check_pair", "needs to run code shipped with the model"),
    ("empty-dataset", None, "empty", [], "prepare_data", "training data is empty"),
    ("malformed-json-line", None, "bad_json", [], "prepare_data", "bad.jsonl line 3: invalid JSON"),
    (
        "missing-field-unknown-role",
        None,
        "bad_rows",
        [],
        "prepare_data",
        "rows.jsonl line 2: messages[1] has unknown role 'robot'",
    ),
    (
        "every-sample-too-long",
        None,
        "ok",
        ["data.max_length=8", "data.overlong=drop"],
        "prepare_data",
        "samples are longer than data.max_length=8",
    ),
    ("unknown-eval-suite", None, "ok", ["eval.suites=[toy-maths]"], "flow", "unknown suite or task 'toy-maths'"),
    (
        "code-eval-without-opt-in",
        None,
        "ok",
        ["eval.suites=[humaneval-offline]"],
        "flow",
        "execute model-written code, which is off by default",
    ),
]


@pytest.mark.parametrize(
    "case, model, data, overrides, task, message", PREFECT_CASES, ids=[c[0] for c in PREFECT_CASES]
)
@pytest.mark.slow
def test_bad_input_fails_the_prefect_task_with_its_message(
    prefect_api, store_home, llama_trio, bad_models, tmp_path, monkeypatch, case, model, data, overrides, task, message
):

    from flows.shadow_ft import shadow_ft

    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    trio = {"base": bad_models[model] if model else llama_trio["base"], "instruct": llama_trio["instruct"]}
    cfg = make_config(trio, _data(data, tmp_path), *overrides)
    state = shadow_ft(config=cfg, return_state=True)
    assert state.is_failed()
    runs = settled_task_runs(state.state_details.flow_run_id)
    states = {r.name: r.state for r in runs}
    failed = state if task == "flow" else states[task]
    assert failed.is_failed() and message in failed.message, failed.message
    assert "train-base" not in states  # nothing after the failed stage ran
    store = ArtifactStore(store_home)
    assert not [p for p in store.verify()["complete"] if p.split("/")[1] in ("train", "graft", "eval")]
    assert store.verify()["incomplete"] == []  # nothing half-written


# -- bad input through `shadowft run`: exit code 2, the message and its hint, no traceback -----------
RUN_CASES = [
    ("unknown-key", None, ["train.lrr=1e-4"], "train.lrr: unknown key (did you mean 'lr'?)"),
    ("wrong-type", None, ["train.batch_size=many"], "train.batch_size: input should be a valid integer"),
    ("negative-lr", None, ["train.lr=-1e-4"], "train.lr: must be greater than 0"),
    ("unknown-eval-suite", None, ["eval.suites=[toy-maths]"], "unknown suite or task 'toy-maths'"),
    ("code-eval-without-opt-in", None, ["eval.suites=[humaneval-offline]"], "execute model-written code"),
    ("unrelated-models", "unrelated", [], "is above the threshold 0.15"),
    ("needs-trust-remote-code", "remote_code", [], "set pair.trust_remote_code: true only if"),
    ("malformed-json-line", "bad_json", [], "bad.jsonl line 3: invalid JSON"),
]
#: cases refused by the config or `stages.preflight` in `shadowft run`, before Prefect is imported
FAIL_BEFORE_PREFECT = {"unknown-key", "wrong-type", "negative-lr", "unknown-eval-suite", "code-eval-without-opt-in"}


def _run_yaml(path: Path, trio: dict, data: Path) -> Path:
    cfg = {
        "pair": {"base": str(trio["base"]), "instruct": str(trio["instruct"])},
        "data": {"sources": [str(data)], "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 4, "grad_accum": 1, "save_steps": 2},
        "eval": {"suites": ["toy-math"], "limit": 2},
        "baselines": ["instruct"],
        "output": {"root": str(path.parent / "runs")},  # run folders beside the test's data, not in the repo
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(tmp_path: Path, api: str | None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "SHADOWFT_HOME": str(tmp_path / "store"), "PREFECT_HOME": str(tmp_path / "prefect"), **extra}
    env.pop("HF_ALLOW_CODE_EVAL", None)
    if api:
        env["PREFECT_API_URL"] = api
    else:
        env.pop("PREFECT_API_URL", None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("case, bad, overrides, message", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_shadowft_run_reports_bad_input_without_traceback(
    prefect_api, llama_trio, bad_models, tmp_path, case, bad, overrides, message
):
    trio = {"base": bad_models[bad] if bad in bad_models else llama_trio["base"], "instruct": llama_trio["instruct"]}
    data = _data(bad if bad == "bad_json" else "ok", tmp_path)
    cfg = _run_yaml(tmp_path / "run.yaml", trio, data)
    args = [a for o in overrides for a in ("--set", o)]
    r = subprocess.run(
        [*SHADOWFT, "run", str(cfg), *args],
        env=_env(tmp_path, prefect_api, PYTHONPROFILEIMPORTTIME="1"),  # Python logs each import on stderr
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    imports = [line for line in r.stderr.splitlines() if line.startswith("import time:")]
    err = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("import time:"))
    assert r.returncode == 2, err[-3000:]
    assert message in err and "hint:" in err, err[-3000:]
    assert "Traceback" not in err + r.stdout, err[-3000:]
    # config errors and the preflight checks stop the command before Prefect is imported (so before any
    # Prefect API or stage); the others fail in a task, after Prefect started (the import log's control)
    prefect_imported = any(line.rsplit("|", 1)[1].strip().split(".")[0] == "prefect" for line in imports)
    assert imports and prefect_imported == (case not in FAIL_BEFORE_PREFECT), case
    store = ArtifactStore(tmp_path / "store")
    assert not [p for p in store.verify()["complete"] if not p.startswith("artifacts/pair")]
    assert store.verify()["incomplete"] == []


# -- bad input through `shadowft graft` --------------------------------------------------------------
def _adapter_for_other_architecture(tmp_path: Path) -> list[str]:
    from shadowft.tiny import make_trio
    from tests.helpers import make_adapter

    wide = make_trio(tmp_path / "wide", arch="llama", hidden_size=48)
    return ["--adapter", str(make_adapter(wide["base"], tmp_path / "adapter"))]


def _diverged_tuned(llama_trio, tmp_path: Path) -> list[str]:
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    state = load_file(bad / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    return ["--base", str(llama_trio["base"]), "--tuned", str(bad)]


@pytest.mark.parametrize(
    "case, message", [("adapter-other-architecture", "does not fit"), ("diverged-update", "up_proj")]
)
def test_shadowft_graft_refuses_bad_update(llama_trio, tmp_path, case, message):
    update = (
        _adapter_for_other_architecture(tmp_path)
        if case.startswith("adapter")
        else _diverged_tuned(llama_trio, tmp_path)
    )
    out = tmp_path / "out"
    r = subprocess.run(
        [*SHADOWFT, "graft", "--instruct", str(llama_trio["instruct"]), "--out", str(out), *update],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


# -- crashes: SIGKILL, then the same command again ---------------------------------------------------
def _wait_for(cond, proc: subprocess.Popen, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = cond()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {_output(proc)}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and anything it started, without any cleanup
    proc.wait(30)


def _popen(cmd: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start `cmd` in its own process group, its output in `log` (a pipe could fill and block it)."""
    log = log or Path(env["SHADOWFT_HOME"] if env else "/tmp").parent / f"proc-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _output(proc: subprocess.Popen) -> str:
    return Path(proc.log).read_text()[-3000:]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_killed_run_resumes_training_then_reuses_every_stage_before_eval(prefect_api, llama_trio, tmp_path):
    from shadowft.train import complete_checkpoints

    cfg = _run_yaml(tmp_path / "run.yaml", llama_trio, write_dataset(tmp_path / "d.jsonl", n=32))
    cmd = [*SHADOWFT, "run", str(cfg), "--set", "train.max_steps=60", "--set", "train.save_steps=4"]
    env = _env(tmp_path, prefect_api)
    store = ArtifactStore(tmp_path / "store")
    ckpts = lambda: [c for d in (store.root / "work" / "train").glob("*/checkpoints") for c in complete_checkpoints(d)]  # noqa: E731

    # 1. killed during training, once a checkpoint exists
    proc = _popen(cmd, env)
    _wait_for(ckpts, proc, 240, "a training checkpoint")
    _kill(proc)
    last = max(int(c.name.split("-")[1]) for c in ckpts())
    assert store.get("train", ckpts()[0].parent.parent.name) is None  # no artifact published

    # 2. the same command: training resumes from the last checkpoint; killed during evaluation
    proc = _popen(cmd, env)
    eval_tmp = lambda: list((store.root / "artifacts" / "eval").glob(".*.tmp-*"))  # noqa: E731
    # Instruct's evaluation may start beside the graft (stages are submitted concurrently): kill once
    # the graft is published and an evaluation is under way, so every stage before evaluation is done.
    grafted = lambda: any(b["stage"] == "graft" for b in store.builds())  # noqa: E731
    _wait_for(lambda: grafted() and eval_tmp(), proc, 240, "the graft, then an evaluation under way")
    _kill(proc)
    trained = [b for b in store.builds() if b["stage"] == "train"]
    assert len(trained) == 1
    info = store.manifest("train", trained[0]["key"])["train"]
    assert info["resumed_step"] == last and info["resumed_from"] == f"checkpoint-{last}" and info["global_step"] == 60
    assert not store.get("eval", eval_tmp()[0].name[1:].split(".tmp-")[0])

    # 3. the same command: every stage before evaluation comes from the store and Prefect's cache
    before = {(b["stage"], b["key"]) for b in store.builds()}
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    new = [(b["stage"], b["key"]) for b in store.builds() if (b["stage"], b["key"]) not in before]
    assert {s for s, _ in new} == {"eval", "report"}, new
    assert states_of_last_flow_run()["train-base"] == "Cached"
    keys = [(b["stage"], b["key"]) for b in store.builds()]
    assert len(keys) == len(set(keys))  # nothing was computed twice
    # the killed builds' temp dirs were cleaned by the re-run that took their lock; the store is consistent
    v = subprocess.run(
        [*SHADOWFT, "store", "verify", "--root", str(store.root), "--json"], cwd=REPO, capture_output=True, text=True
    )
    assert v.returncode == 0 and json.loads(v.stdout)["incomplete"] == [], v.stdout + v.stderr


def states_of_last_flow_run() -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
    runs = settled_task_runs(flow_run.id)
    return {r.name: r.state.name for r in runs}


@pytest.fixture(scope="module")
def big_trio(tmp_path_factory) -> dict[str, Path]:
    """A trio of ~74 MB models: a graft writes for 1-2 s, long enough to be killed mid-write."""
    from shadowft.tiny import make_trio

    return make_trio(tmp_path_factory.mktemp("big"), hidden_size=512, num_layers=8)


def _graft_cmd(trio: dict, out: Path, *extra: str) -> list[str]:
    """`shadowft graft` of a trio's tuned Base onto its Instruct, written to `out`."""
    return [
        *SHADOWFT,
        "graft",
        "--instruct",
        str(trio["instruct"]),
        "--base",
        str(trio["base"]),
        "--tuned",
        str(trio["tuned"]),
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_killed_graft_publishes_nothing_and_rerun_is_byte_identical(big_trio, tmp_path):
    def graft(out: Path) -> list[str]:
        return _graft_cmd(big_trio, out, "--max-shard-size", "20MB")

    out = tmp_path / "out"
    proc = _popen(graft(out), log=tmp_path / "graft.log")
    tmp = _wait_for(lambda: list(tmp_path.glob(".out.tmp-*/*.safetensors")), proc, 120, "the first shard")
    _kill(proc)
    assert not out.exists(), "a killed graft published its output"
    assert tmp[0].parent.exists()  # the killed writer's temp dir (SIGKILL leaves no chance to clean up)

    r = subprocess.run(graft(out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not tmp[0].parent.exists(), "the dead writer's temp dir was not cleaned"
    ref = tmp_path / "ref"
    assert subprocess.run(graft(ref), cwd=REPO, capture_output=True, text=True, timeout=300).returncode == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(p.name for p in ref.iterdir()) and len([f for f in files if f.endswith(".safetensors")]) > 1
    for name in files:
        if name == "shadowft_provenance.json":  # records when and where: compare the rest
            a, b = (json.loads((d / name).read_text()) for d in (out, ref))
            assert {k: v for k, v in a.items() if k not in ("created", "out", "seconds")} == {
                k: v for k, v in b.items() if k not in ("created", "out", "seconds")
            }
        else:
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def _fsize_limit(nbytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def test_disk_full_during_graft_is_a_clean_error(llama_trio, tmp_path):
    out = tmp_path / "out"
    cmd = _graft_cmd(llama_trio, out)
    r = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_fsize_limit(50_000),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert r.returncode == 2 and "file size limit exceeded while writing" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and not out.exists() and not list(tmp_path.glob(".out.*"))


STORE_DISK_FULL = """
import sys
from pathlib import Path
from shadowft.errors import ShadowFTError
from shadowft.stages import delta_spec, run
from shadowft.store import ArtifactStore
store = ArtifactStore(sys.argv[1])
try:
    run(delta_spec(Path(sys.argv[2]), store.get("train", "fake")), store)
except ShadowFTError as exc:
    print(exc.message)
    sys.exit(2)
"""


def test_disk_full_during_a_stage_leaves_the_store_consistent(llama_trio, tmp_path):
    store = ArtifactStore(tmp_path / "store")
    store.build("train", "fake", lambda d: shutil.copytree(llama_trio["tuned"], d / "model") and None)
    r = subprocess.run(
        [sys.executable, "-c", STORE_DISK_FULL, str(store.root), str(llama_trio["base"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_fsize_limit(50_000),
    )
    assert r.returncode == 2 and "file size limit exceeded while writing the delta artifact" in r.stdout, (
        r.stdout + r.stderr
    )
    report = store.verify()
    assert report["complete"] == ["artifacts/train/fake"] and report["incomplete"] == []
    # with space again, the same stage builds
    from shadowft.stages import delta_spec, run

    art, built = run(delta_spec(llama_trio["base"], store.get("train", "fake")), store)
    assert built and (art.path / "delta").is_dir()


def test_no_space_left_on_a_real_small_filesystem(llama_trio, tmp_path):
    """ENOSPC from a 100 KB tmpfs (needs root to mount): a clean error, nothing left on the disk. (A
    writer that fills a sparse file through a memory map dies of SIGBUS here instead: measured.)"""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        cmd = _graft_cmd(llama_trio, mnt / "out")
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "no space left on the device" in r.stderr, r.stderr[-3000:]
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- concurrency and the store check ---------------------------------------------------------------
@pytest.mark.slow
def test_two_different_configs_at_once_share_their_common_stages(prefect_api, llama_trio, tmp_path):
    data = write_dataset(tmp_path / "d.jsonl")
    cfg = _run_yaml(tmp_path / "run.yaml", llama_trio, data)
    env = _env(tmp_path, prefect_api)
    procs = [_popen([*SHADOWFT, "run", str(cfg), "--set", f"graft.alpha={alpha}"], env) for alpha in (1.0, 0.5)]
    for p in procs:
        p.wait(600)
    assert [p.returncode for p in procs] == [0, 0], _output(procs[0]) + _output(procs[1])
    keys = [(b["stage"], b["key"]) for b in ArtifactStore(tmp_path / "store").builds()]
    assert len(keys) == len(set(keys)), "a stage was computed twice"
    per_stage = {s: sum(1 for k in keys if k[0] == s) for s, _ in keys}
    # shared: pair check, data, training, the Instruct baseline's evaluation; one each per alpha: graft, its eval, report
    assert per_stage == {"pair": 1, "data": 1, "train": 1, "graft": 2, "eval": 3, "report": 2}, per_stage


def test_store_verify_reports_and_removes_garbage(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    a, _ = store.build("graft", "done", lambda d: (d / "w").write_text("1") and None)
    store.work_dir("train", "done-elsewhere")  # checkpoints of an unpublished artifact: resumable, kept
    store.build("train", "finished", lambda d: None)
    (store.work_dir("train", "finished") / "checkpoints").mkdir()  # leftover of a published artifact
    for key in ("dead", "half"):  # builds killed after taking their key's lock
        with store.lock("graft", key):
            pass
    (a.path.parent / ".dead.tmp-1-abc").mkdir()  # a killed build
    half = store.path("graft", "half")
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")  # a dir without manifest
    store.cache_token("eval", "never")  # a build id announced, never published

    cmd = [*SHADOWFT, "store", "verify", "--root", str(store.root)]
    r = subprocess.run([*cmd, "--json"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    rep = json.loads(r.stdout)
    assert sorted(rep["incomplete"]) == ["artifacts/graft/.dead.tmp-1-abc", "artifacts/graft/half"]
    assert rep["stale_work"] == ["work/train/finished"] and rep["resumable"] == ["work/train/done-elsewhere"]
    assert rep["pending"] == ["artifacts/eval/.never.pending"]
    r = subprocess.run([*cmd, "--remove"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "store is consistent" in r.stdout, r.stdout + r.stderr
    rep = store.verify()
    assert rep["incomplete"] == rep["stale_work"] == rep["pending"] == []
    assert rep["resumable"] == ["work/train/done-elsewhere"] and store.get("graft", "done") is not None


# -- security ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_token_never_reaches_logs_parameters_artifacts_or_manifests(
    prefect_api, store_home, llama_trio, tmp_path, monkeypatch, capfd
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from flows.shadow_ft import shadow_ft

    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", SENTINEL)
    cfg = make_config(llama_trio, write_dataset(tmp_path / "d.jsonl"), "train.seed=3", "baselines=[instruct]")
    state = shadow_ft(config=cfg, return_state=True)
    assert state.is_completed()
    captured = capfd.readouterr()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = client.read_artifacts()
    assert logs and artifacts and task_runs
    places = {
        "stdout/stderr": captured.out + captured.err,
        "prefect logs": "\n".join(log.message for log in logs),
        "flow parameters": json.dumps(flow_run.parameters, default=str),
        "task inputs/states": "\n".join(f"{t.task_inputs} {t.state.message}" for t in task_runs),
        "prefect artifacts": "\n".join(f"{a.key} {a.data} {a.description}" for a in artifacts),
    }
    for f in store_home.rglob("*"):  # manifests, artifacts, builds.jsonl, work dirs
        if f.is_file():
            places[str(f)] = f.read_bytes().decode("latin-1")
    prefect_home = Path(os.environ["PREFECT_HOME"])
    for f in prefect_home.rglob("*"):  # persisted task results
        if f.is_file() and f.stat().st_size < 50_000_000:
            places[str(f)] = f.read_bytes().decode("latin-1")
    # The server's database: prefect_test_harness keeps it in a temp dir of its own, not in PREFECT_HOME.
    # Its file and SQLite's write-ahead log beside it (recent rows may be there, not yet in the file).
    db_url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    assert db_url.startswith("sqlite+aiosqlite:///"), db_url
    db = Path(db_url.removeprefix("sqlite+aiosqlite:///"))
    db_bytes = b"".join(f.read_bytes() for f in sorted(db.parent.glob(db.name + "*")) if f.is_file())
    # the database scanned is the one this run was recorded in: its flow run's name and log lines are there
    assert flow_run.name.encode() in db_bytes and logs[-1].message.encode() in db_bytes, db
    places[f"prefect database {db}"] = db_bytes.decode("latin-1")
    leaks = [where for where, text in places.items() if SENTINEL in text]
    assert not leaks, f"HF_TOKEN leaked into: {leaks}"


PY_SOURCES = [p for d in ("shadowft", "tasks", "flows") for p in (REPO / d).rglob("*.py")]


def test_code_never_unpickles_or_trusts_remote_code_by_default():
    """Static check: every torch.load passes weights_only=True; trust_remote_code is never hard-wired
    on, and every trust_remote_code parameter defaults to False."""
    for path in PY_SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                kw = {k.arg: k.value for k in node.keywords}
                if name.endswith("torch.load"):
                    assert "weights_only" in kw and ast.unparse(kw["weights_only"]) == "True", f"{path}:{node.lineno}"
                if "trust_remote_code" in kw:
                    assert ast.unparse(kw["trust_remote_code"]) != "True", (
                        f"{path}:{node.lineno} forces trust_remote_code"
                    )
                if name.endswith(("pickle.load", "pickle.loads")):
                    raise AssertionError(f"{path}:{node.lineno} unpickles")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = (
                    [None] * (len(node.args.args) - len(node.args.defaults))
                    + node.args.defaults
                    + node.args.kw_defaults
                )
                for arg, default in zip(args, defaults):
                    if arg.arg == "trust_remote_code" and default is not None and not isinstance(default, ast.Call):
                        assert ast.unparse(default) == "False" or "Option" in ast.unparse(default), (
                            f"{path}:{node.lineno}"
                        )
    from shadowft.config import PairConfig

    assert PairConfig().trust_remote_code is False


def test_servers_bind_to_localhost_unless_told_otherwise():
    """Prefect's server defaults to 127.0.0.1; every `host` parameter in the code defaults to loopback,
    no call passes a non-loopback host literal, and no script or doc starts a server on another address."""
    from prefect.settings import get_current_settings

    loopback = {"127.0.0.1", "localhost", "::1"}
    assert get_current_settings().server.api.host == "127.0.0.1"
    for path in PY_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = (
                    [None] * (len(node.args.args) - len(node.args.defaults))
                    + node.args.defaults
                    + node.args.kw_defaults
                )
                for arg, default in zip(args, defaults):
                    if arg.arg in ("host", "bind", "address") and isinstance(default, ast.Constant):
                        # an `address` of None connects to what is there (Ray's own lookup), binds nothing
                        allowed = loopback | ({None} if arg.arg == "address" else set())
                        assert default.value in allowed, (
                            f"{path}:{node.lineno}: {arg.arg} defaults to {default.value!r}"
                        )
            if isinstance(node, ast.Call):
                for k in node.keywords:
                    if k.arg in ("host", "bind") and isinstance(k.value, ast.Constant):
                        assert k.value.value in loopback, f"{path}:{node.lineno}: {k.arg}={k.value.value!r}"
    scripts = [
        *(REPO / "deployments").rglob("*"),
        *REPO.glob("*.md"),
        *(REPO / "docs").rglob("*.md"),
        *REPO.glob("Makefile"),
    ]
    for f in scripts:
        if f.is_file():
            for m in re.finditer(r"--host[ =]+(\S+)", f.read_text(errors="ignore")):
                assert m.group(1).strip("'\"`") in loopback | {"HOST", "$HOST"}, f"{f}: --host {m.group(1)}"


# -- the doc ---------------------------------------------------------------------------------------
def test_reliability_doc_names_existing_tests():
    """Every `tests/FILE.py::test_name` in docs/RELIABILITY.md exists (the doc stays true)."""
    doc = (REPO / "docs" / "RELIABILITY.md").read_text()
    named = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc))
    assert len(named) >= 30
    missing = []
    for file, test in sorted(named):
        path = REPO / file
        tree = ast.parse(path.read_text()) if path.is_file() else None
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)} if tree else set()
        if test not in names:
            missing.append(f"{file}::{test}")
    assert not missing, f"docs/RELIABILITY.md names tests that do not exist: {missing}"
