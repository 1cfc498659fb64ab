"""Heavy stages on a Ray cluster: a real two-node Ray cluster on this machine (`ray start --head` and a
second `ray start --address`, each node with a custom resource so that placement can be checked), the
demo pipeline across it with the two trainings on different nodes, and the store check naming the node
that cannot see the store (that node runs in a mount namespace of its own, where the directory is an
empty tmpfs: a node without the shared mount). `ray stop --force` ends every Ray process afterwards."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch

from shadowft.config import ResourcesConfig
from shadowft.errors import ShadowFTError
from tests.test_pipeline import make_config, write_dataset

pytest.importorskip("ray", reason="the cluster extra: pip install 'shadowft[cluster]'")
pytest.importorskip("prefect_ray", reason="the cluster extra: pip install 'shadowft[cluster]'")

RAY = str(Path(sys.executable).with_name("ray"))
#: what `ray start` runs on a node (a stray one would hold CPUs and ports after the test)
RAY_PROCESSES = {"raylet", "gcs_server"}


def test_cluster_setting_is_checked():
    assert ResourcesConfig().cluster == "local"
    assert ResourcesConfig(cluster="ray://head.example:10001").cluster == "ray://head.example:10001"
    for bad in ("ray://head", "kubernetes", "http://head:10001"):
        with pytest.raises(ValueError, match="local, auto or ray://HOST:PORT"):
            ResourcesConfig(cluster=bad)


def test_the_plain_flow_with_a_cluster_setting_is_refused(prefect_env, llama_trio, tmp_path):
    """A deployment of the plain flow would run heavy stages here while the config says Ray: refused."""
    from flows.shadow_ft import shadow_ft

    cfg = make_config(llama_trio, write_dataset(tmp_path / "d.jsonl"), "resources.cluster=auto")
    with pytest.raises(ShadowFTError, match="does not use the Ray task runner"):
        shadow_ft(config=cfg)
    assert not (prefect_env / "store" / "artifacts").exists()  # before any stage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@dataclass
class TwoNodes:
    """The running two-node cluster: node `b` sees `hidden` as an empty tmpfs of its own."""

    hidden: Path
    port: int
    env: dict[str, str]

    def start_node_b(self) -> None:
        worker = [RAY, "start", "--address", f"127.0.0.1:{self.port}", *NODE, "--resources", '{"b": 1}']
        subprocess.run(
            ["unshare", "-m", "sh", "-c", f'mount -t tmpfs none "{self.hidden}" && exec "$0" "$@"', *worker],
            env=self.env,
            check=True,
            capture_output=True,
        )


#: each node: one CPU, no GPU
NODE = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats"]


@pytest.fixture(scope="module")
def ray_two_nodes(tmp_path_factory):
    """Node `a` (head) and node `b`, one CPU each; on `b`, `<tmp>/hidden` is an empty tmpfs."""
    if not _can_unshare():
        pytest.skip("needs unshare -m (root) to give one node its own mounts")
    hidden = tmp_path_factory.mktemp("ray") / "hidden"
    hidden.mkdir()
    cluster = TwoNodes(hidden, _free_port(), {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    head = [RAY, "start", "--head", "--port", str(cluster.port), "--include-dashboard=false", *NODE]
    try:
        subprocess.run([*head, "--resources", '{"a": 1}'], env=cluster.env, check=True, capture_output=True)
        cluster.start_node_b()
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{cluster.port}"
        yield cluster
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=cluster.env, capture_output=True, timeout=60)
        left = [p.info for p in psutil.process_iter(["pid", "name"]) if p.info["name"] in RAY_PROCESSES]
        assert not left, f"Ray processes outlived the test: {left}"


def _node_resource(nodes: list[dict], node_id: str) -> str:
    (node,) = [n for n in nodes if n["NodeID"] == node_id]
    return next(k for k in ("a", "b") if k in node["Resources"])


@pytest.mark.slow
def test_pipeline_on_two_ray_nodes(ray_two_nodes, prefect_env, llama_trio, tmp_path):
    import ray

    from flows.shadow_ft import for_cluster
    from shadowft.cluster import check_store_on_nodes, placements

    # a store that node b does not see: refused, naming node b, before any stage
    if not ray.is_initialized():  # the Ray Train test, in either order, may have connected already
        ray.init("auto")
    nodes = ray.nodes()
    with pytest.raises(ShadowFTError, match=r"not visible from 1 Ray node\(s\).*FileNotFoundError") as err:
        check_store_on_nodes(ray_two_nodes.hidden / "store")
    (b_id,) = _alive("b")  # a node b lost by another test stays listed, dead
    assert f"node {b_id[:8]}" in str(err.value)

    # the demo pipeline: the trainings of Base and Instruct are Ray tasks, one CPU each: one per node
    data = write_dataset(tmp_path / "d.jsonl", n=32)
    cfg = make_config(llama_trio, data, "resources.cluster=auto", "eval.limit=2", "baselines=[direct]")
    state = for_cluster(cfg)(config=cfg, return_state=True)
    assert state.is_completed(), state
    store = prefect_env / "store"
    where = {rec["stage"] + ":" + rec["key"]: rec for rec in placements(store).values()}
    trained = [rec for key, rec in where.items() if key.startswith("train:")]
    assert len(trained) == 2
    assert {_node_resource(nodes, rec["node_id"]) for rec in trained} == {"a", "b"}, trained
    assert all(rec["devices"] == [] for rec in trained)  # a CPU-only cluster: no GPU asked for or given
    evaluated = [rec for key, rec in where.items() if key.startswith("eval:")]
    assert evaluated and all(rec.get("node_id") for rec in evaluated)
    # the run folder's report says where each heavy stage ran
    folder = Path(state.result()["folder"])
    report = (folder / "report.md").read_text()
    assert "ran on" in report and f"node {trained[0]['node_id'][:8]}" in report
    summary = json.loads((folder / "summary.json").read_text())
    ran = {t["stage"]: t["ran_on"] for t in summary["run"]["stage_times"]}
    assert {ran["train-base"]["node_id"], ran["train-instruct"]["node_id"]} == {r["node_id"] for r in trained}
    assert ran["pair"] is None  # a light stage: in the flow's own process, nothing recorded


@pytest.mark.slow
def test_ray_train_across_two_nodes_equals_torchrun_ddp(ray_two_nodes, llama_trio, tmp_path):
    """One training, two workers placed by Ray on the two nodes (gloo), against torchrun's 2 ranks on
    this machine: the same job, so the same weights within float error."""
    import ray
    from safetensors.torch import load_file

    from shadowft.config import DataConfig, TrainConfig
    from shadowft.data import prepare_dataset
    from shadowft.train import train_model

    data = write_dataset(tmp_path / "d.jsonl", n=32)
    prepare_dataset(DataConfig(sources=[str(data)], max_length=64), llama_trio["instruct"], tmp_path / "p")
    common = dict(max_steps=3, batch_size=2, save_steps=100, num_processes=2, main_port=_free_port())
    out = {}
    for launcher in ("torchrun", "ray-train"):
        if launcher == "ray-train" and not ray.is_initialized():
            ray.init("auto")
        r = train_model(
            llama_trio["base"],
            tmp_path / "p",
            TrainConfig(**common, launcher=launcher),
            tmp_path / launcher,
            tmp_path / f"work-{launcher}",
        )
        assert (r.launcher, r.world_size, r.global_step) == (launcher, 2, 3)
        out[launcher] = load_file(str(tmp_path / launcher / "adapter_model.safetensors"))
    ranks = sorted((tmp_path / "work-ray-train" / "launch" / "ray-train" / "logs").glob("rank-*.node"))
    assert len({json.loads(p.read_text())["node_id"] for p in ranks}) == 2, "the two workers shared a node"
    assert out["torchrun"].keys() == out["ray-train"].keys()
    assert any(w.abs().max() > 0 for n, w in out["ray-train"].items() if "lora_B" in n)  # it did train
    for name, w in out["torchrun"].items():
        assert torch.allclose(w, out["ray-train"][name], atol=1e-6), name


def _alive(label: str) -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and label in n["Resources"]]


def _kill_node(node_id: str) -> None:
    """SIGKILL a node's raylet and everything it started (its workers): the node is gone at once,
    as a preempted machine is; nothing of it runs any cleanup."""
    (raylet,) = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "raylet" and f"--node_id={node_id}" in (p.info["cmdline"] or [])
    ]
    for p in [*raylet.children(recursive=True), raylet]:
        p.kill()


def _checkpoints(train_work: Path) -> dict[str, int]:
    """training work dir -> its complete checkpoints (Trainer writes trainer_state.json last)."""
    return {d.name: len(list(d.glob("checkpoints/checkpoint-*/trainer_state.json"))) for d in train_work.glob("*")}


@pytest.mark.slow
def test_a_node_lost_mid_stage_fails_naming_it_and_the_rerun_resumes(ray_two_nodes, prefect_env, llama_trio, tmp_path):
    """Node b is killed while the two trainings run (one per node, each past a checkpoint): the run fails
    naming the lost stage and node b, that stage's task run is Crashed (not Running forever), the
    training on node a finishes and is stored; the rerun takes it from the store and resumes the lost
    one from its last checkpoint."""
    import ray

    from flows.shadow_ft import for_cluster
    from shadowft.cluster import check_store_on_nodes
    from tests.helpers import settled_task_runs

    if not ray.is_initialized():
        ray.init("auto")
    (b_id,) = _alive("b")
    data = write_dataset(tmp_path / "d.jsonl", n=32)
    steps = ("train.max_steps=24", "train.save_steps=2", "train.batch_size=2")
    cfg = make_config(
        llama_trio,
        data,
        "resources.cluster=auto",
        "eval.limit=2",
        "eval.suites=[toy-math]",
        "baselines=[direct]",
        *steps,
    )
    train_work = prefect_env / "store" / "work" / "train"

    def kill_b_once_both_trainings_checkpointed() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            done = _checkpoints(train_work)
            if len(done) == 2 and min(done.values()) >= 1:
                _kill_node(b_id)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_b_once_both_trainings_checkpointed, daemon=True)
    killer.start()
    state = for_cluster(cfg)(config=cfg, return_state=True)
    killer.join(timeout=5)
    assert state.is_failed(), state
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ShadowFTError), error
    lost = re.match(r"(train-\w+) was lost with Ray node ([0-9a-f]{8})", str(error))
    assert lost and lost.group(2) == b_id[:8], str(error)
    assert "rerun the same config" in error.hint
    states = {r.name: r.state.name for r in settled_task_runs(state.state_details.flow_run_id)}
    other = ({"train-base", "train-instruct"} - {lost.group(1)}).pop()
    assert states[lost.group(1)] == "Crashed" and states[other] == "Completed", states

    # Ray marks a SIGKILLed node dead only after missed heartbeats: until then it is listed alive, and
    # the store check's probe to it is unschedulable. A node lost under the check is no store failure.
    checked = check_store_on_nodes(prefect_env / "store")
    assert b_id not in {n["node_id"] for n in checked} and checked, checked

    ray_two_nodes.start_node_b()  # the node comes back (or another takes its place)
    deadline = time.time() + 60
    while not set(_alive("b")) - {b_id} and time.time() < deadline:
        time.sleep(0.5)
    rerun = for_cluster(cfg)(config=cfg, return_state=True)
    assert rerun.is_completed(), rerun
    states = {r.name: r.state.name for r in settled_task_runs(rerun.state_details.flow_run_id)}
    assert states[other] == "Cached" and states[lost.group(1)] == "Completed", states
    results = [
        json.loads(p.read_text())
        for p in (prefect_env / "store" / "artifacts" / "train").glob("*/model/train_result.json")
    ]
    resumed = [r for r in results if r["resumed_step"] > 0]
    assert len(resumed) == 1 and resumed[0]["resumed_step"] % 2 == 0 and resumed[0]["global_step"] == 24, results
