"""Launched training on CPU for real: torchrun starts 2 ranks (DDP over gloo), two "nodes" on
localhost, a rank that fails, a launcher SIGKILLed mid-training and resumed, no rank left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shadowft.config import DataConfig, TrainConfig
from shadowft.errors import ShadowFTError
from shadowft.train import train_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def rank_pids(work: Path) -> list[int]:
    return [int(p.read_text()) for p in work.glob("launch/node-*/logs/*.pid")]


def assert_none_left(work: Path, within: float = 15.0) -> None:
    pids = rank_pids(work)
    assert pids, "the ranks recorded no pids"
    deadline = time.time() + within
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)], "rank processes outlived the launch"


@pytest.fixture(scope="module")
def prepared(zoo_family, tmp_path_factory):
    from shadowft.data import prepare_dataset

    out = tmp_path_factory.mktemp("launch-data") / "p"
    prepare_dataset(
        DataConfig(sources=[str(zoo_family.data / "domain.jsonl")], max_samples=64, max_length=128),
        zoo_family.instruct,
        out,
    )
    return out


def spec(**kw) -> TrainConfig:
    base = dict(max_steps=4, batch_size=4, grad_accum=1, save_steps=2, main_port=free_port())
    return TrainConfig(**{**base, **kw})


def test_two_processes_ddp(zoo_family, prepared, tmp_path):
    events: list[dict] = []
    r = train_model(
        zoo_family.base, prepared, spec(num_processes=2), tmp_path / "out", tmp_path / "work", events.append
    )
    assert (r.launcher, r.distributed, r.world_size, r.devices) == ("torchrun", "ddp", 2, "2 x cpu")
    assert r.global_batch == 4 * 1 * 2 and r.global_step == 4 and r.threads == 1
    saved = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert saved["world_size"] == 2 and saved["global_batch"] == 8 and saved["num_nodes"] == 1
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    # rank 0's progress was relayed: every step once, with the logged losses
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert [c["loss"] for c in r.loss_curve] == [e["loss"] for e in events if e["event"] == "log"]
    assert not (tmp_path / "work" / "launch" / "node-0" / "final").exists()  # handed over, then removed
    assert_none_left(tmp_path / "work")


def test_two_nodes_on_localhost(zoo_family, prepared, tmp_path):
    """Two launchers (node_rank 0 and 1), one process each, rendezvous on 127.0.0.1 over gloo; the
    work dir is shared as it would be on a cluster's shared storage. Node 0 publishes."""
    port = free_port()
    node = {r: spec(num_processes=1, num_nodes=2, node_rank=r, main_port=port) for r in (0, 1)}
    with ThreadPoolExecutor(2) as pool:
        futures = {
            r: pool.submit(train_model, zoo_family.base, prepared, node[r], tmp_path / "out", tmp_path / "work")
            for r in (0, 1)
        }
        results = {r: f.result(timeout=600) for r, f in futures.items()}
    main = results[0]
    assert (main.world_size, main.num_nodes, main.devices, main.global_batch) == (2, 2, "2 x 1 x cpu", 8)
    assert json.loads((tmp_path / "out" / "train_result.json").read_text())["num_nodes"] == 2
    assert results[1].out_dir == str(tmp_path / "out") and results[1].global_step == 0  # node 1 lent its rank
    assert_none_left(tmp_path / "work")


def test_failing_rank_fails_the_launch_with_its_message(zoo_family, prepared, tmp_path, monkeypatch):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import os
        if os.environ.get("RANK") == "1":
            import transformers.trainer as _t
            _step = _t.Trainer.training_step
            def training_step(self, *a, **k):
                if self.state.global_step >= 1:
                    raise RuntimeError("injected failure on rank 1")
                return _step(self, *a, **k)
            _t.Trainer.training_step = training_step
    """)
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(inject), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(
        ShadowFTError, match=r"training rank 1 of 2 failed: RuntimeError: injected failure on rank 1"
    ) as err:
        train_model(zoo_family.base, prepared, spec(num_processes=2), tmp_path / "out", tmp_path / "work")
    assert "Traceback" in err.value.message  # the tail of that rank's log
    assert not (tmp_path / "out").exists()  # nothing published
    assert_none_left(tmp_path / "work")


KILLABLE = """
import sys
from pathlib import Path
from shadowft.config import TrainConfig
from shadowft.train import train_model
spec = TrainConfig.model_validate_json(sys.argv[3])
train_model(Path(sys.argv[1]), Path(sys.argv[2]), spec, Path(sys.argv[4]), Path(sys.argv[5]))
"""


def _complete_steps(ckpt_dir: Path) -> list[int]:
    """Steps of the checkpoints whose trainer_state.json (Trainer writes it last) is whole, read
    independently of shadowft's own `complete_checkpoints`."""
    steps = []
    for state in ckpt_dir.glob("checkpoint-*/trainer_state.json"):
        try:
            steps.append(int(json.loads(state.read_text())["global_step"]))
        except (OSError, ValueError, KeyError):
            continue
    return steps


def test_sigkill_of_the_launching_process_then_resume(zoo_family, prepared, tmp_path):
    s = spec(num_processes=2, max_steps=40, save_steps=2)
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(zoo_family.base), str(prepared), s.model_dump_json(), str(out), str(work)],
        env=env,
    )
    deadline = time.time() + 300
    # two complete checkpoints before the kill, so "the last complete one" differs from the first
    while len(_complete_steps(work / "checkpoints")) < 2 and time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.1)
    assert len(_complete_steps(work / "checkpoints")) >= 2, "not two checkpoints within 300 s"
    proc.send_signal(signal.SIGKILL)  # no cleanup code runs in the launching process
    proc.wait()
    assert_none_left(work)  # ranks and torchrun die with their parent
    assert not out.exists()
    last = max(_complete_steps(work / "checkpoints"))  # nothing writes any more: the state at the kill

    r = train_model(zoo_family.base, prepared, s, out, work)
    assert r.resumed_step == last and r.resumed_from and r.global_step == 40 and r.world_size == 2
    assert_none_left(work)


def test_accelerate_launch_runs_the_same_worker(zoo_family, prepared, tmp_path):
    """`accelerate launch` with the shipped DDP config, one CPU process (accelerate starts several CPU
    processes only through MPI; on GPUs the same command starts one per GPU)."""
    events: list[dict] = []
    r = train_model(
        zoo_family.base, prepared, spec(launcher="accelerate"), tmp_path / "out", tmp_path / "work", events.append
    )
    assert (r.launcher, r.world_size, r.global_step) == ("accelerate", 1, 4)
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert_none_left(tmp_path / "work")


def test_two_nodes_through_the_train_stage_share_one_artifact(zoo_family, tmp_path):
    """The train stage on each node (same config but node_rank, one shared store): node 0 builds and
    publishes; node 1 runs its rank without taking the key's lock, then returns node 0's artifact."""
    from shadowft.stages import data_spec, run, train_spec
    from shadowft.store import ArtifactStore

    store = ArtifactStore(tmp_path / "store")
    data, _ = run(
        data_spec(
            DataConfig(sources=[str(zoo_family.data / "domain.jsonl")], max_samples=32, max_length=128),
            zoo_family.instruct,
        ),
        store,
    )
    port = free_port()
    specs = {r: spec(num_processes=1, num_nodes=2, node_rank=r, main_port=port) for r in (0, 1)}
    with ThreadPoolExecutor(2) as pool:
        futures = {r: pool.submit(run, train_spec(specs[r], zoo_family.base, data, store), store) for r in (0, 1)}
        (art0, built0), (art1, built1) = (futures[r].result(timeout=600) for r in (0, 1))
    assert built0 and not built1 and art0.path == art1.path
    assert json.loads((art0.path / "model" / "train_result.json").read_text())["world_size"] == 2
