"""Heavy stages side by side: slots, their devices, a process per stage, and real Prefect runs whose
task-run timestamps show that the two trainings overlapped, with the same results as one slot."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from shadowft.config import ResourcesConfig, load_config
from shadowft.errors import CheckpointError, ShadowFTError
from shadowft.resources import Slot, SlotPool, plan_slots, run_in_process
from tests.helpers import settled_task_runs
from tests.test_pipeline import make_config, write_dataset


def test_slot_plan_defaults_and_refusals():
    assert plan_slots(ResourcesConfig(), gpus=[]) == [Slot(0)]  # CPU: one slot, today's behaviour
    assert plan_slots(ResourcesConfig(slots=2), gpus=[]) == [Slot(0), Slot(1)]
    assert plan_slots(ResourcesConfig(), gpus=[0, 1, 2, 3]) == [Slot(0, [0]), Slot(1, [1]), Slot(2, [2]), Slot(3, [3])]
    assert plan_slots(ResourcesConfig(devices_per_stage=2), gpus=[0, 1, 2, 3]) == [Slot(0, [0, 1]), Slot(1, [2, 3])]
    assert plan_slots(ResourcesConfig(devices=[2, 3], slots=1), gpus=[0, 1, 2, 3]) == [Slot(0, [2])]
    assert Slot(1, [2, 3]).env() == {"CUDA_VISIBLE_DEVICES": "2,3"} and Slot(0).env() == {}
    with pytest.raises(ShadowFTError, match="make 2 slot"):
        plan_slots(ResourcesConfig(slots=3, devices_per_stage=2), gpus=[0, 1, 2, 3])
    with pytest.raises(ShadowFTError, match="only 1 GPU"):
        plan_slots(ResourcesConfig(devices_per_stage=2), gpus=[0])
    with pytest.raises(ShadowFTError, match=r"names GPU\(s\) \[5\]"):
        plan_slots(ResourcesConfig(devices=[0, 5]), gpus=[0, 1])
    with pytest.raises(ShadowFTError, match="resources.devices: a GPU is listed twice"):
        load_config(None, ["resources.devices=[0, 0]"])
    with pytest.raises(ShadowFTError, match="resources.slots: must be at least 1"):
        load_config(None, ["resources.slots=0"])


def test_slot_pool_hands_out_each_slot_once(tmp_path):
    pool = SlotPool(tmp_path, [Slot(0), Slot(1)], poll_s=0.02)
    held: list[int] = []
    waited = threading.Event()
    release = threading.Event()

    def hold():
        with pool.acquire() as slot:
            held.append(slot.index)
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    while len(held) < 2:
        time.sleep(0.01)
    assert sorted(held) == [0, 1]

    got: list[int] = []

    def third():
        with pool.acquire(on_wait=waited.set) as slot:
            got.append(slot.index)

    t3 = threading.Thread(target=third)
    t3.start()
    assert waited.wait(5) and not got  # both slots held: the third stage waits
    release.set()
    t3.join(10)
    for t in threads:
        t.join(10)
    assert got and got[0] in (0, 1)


def _child_env_and_progress(n: int) -> dict:
    from shadowft.resources import child_progress

    for i in range(n):
        child_progress({"step": i + 1})
    return {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _child_fails() -> None:
    raise CheckpointError("no model here", hint="give a model dir")


def test_run_in_process_env_progress_and_errors():
    events: list[dict] = []
    out = run_in_process(_child_env_and_progress, 3, env={"CUDA_VISIBLE_DEVICES": "1"}, progress=events.append)
    assert out["pid"] != os.getpid() and out["cuda"] == "1"
    assert events == [{"step": 1}, {"step": 2}, {"step": 3}]
    with pytest.raises(CheckpointError, match="no model here") as err:
        run_in_process(_child_fails)
    assert err.value.hint == "give a model dir"


def _task_runs(flow_run_id) -> dict:

    return {r.name: r for r in settled_task_runs(flow_run_id)}


def _adapter_tensors(store: Path) -> dict[str, dict]:
    from safetensors.torch import load_file

    out = {}
    for d in sorted((store / "artifacts" / "train").iterdir()):
        if (d / "manifest.json").exists():
            role = json.loads((d / "manifest.json").read_text())["inputs"]["model"]
            out[role] = load_file(str(d / "model" / "adapter_model.safetensors"))
    return out


def _train_work(store: Path) -> list[tuple[float, float]]:
    """(start, end) of each training's work, from the store's build log, in build order."""
    from datetime import datetime

    out = []
    for line in (store / "builds.jsonl").read_text().splitlines():
        b = json.loads(line)
        if b["stage"] == "train":
            end = datetime.fromisoformat(b["created"]).timestamp()
            out.append((end - b["seconds"], end))
    return out


@pytest.mark.slow
def test_two_slots_train_base_and_instruct_side_by_side(prefect_env, llama_trio, tmp_path, monkeypatch):
    from flows.shadow_ft import shadow_ft
    from tasks._stage import HEAVY_TAG

    data = write_dataset(tmp_path / "d.jsonl", n=64)
    runs = {}
    for slots in (1, 2):
        store = tmp_path / f"store-{slots}"
        monkeypatch.setenv("SHADOWFT_HOME", str(store))
        cfg = make_config(llama_trio, data, "train.max_steps=40", f"resources.slots={slots}")
        state = shadow_ft(config=cfg, return_state=True)
        assert state.is_completed(), state
        tasks = _task_runs(state.state_details.flow_run_id)
        (report,) = (store / "artifacts" / "report").glob("*/summary.json")
        summary = json.loads(report.read_text())
        runs[slots] = (tasks, summary, _adapter_tensors(store), _train_work(store))
        assert set(tasks["train-base"].tags) >= {HEAVY_TAG}

    def interval(tasks, name):
        return tasks[name].start_time, tasks[name].end_time

    (b0, b1), (i0, i1) = interval(runs[2][0], "train-base"), interval(runs[2][0], "train-instruct")
    assert b0 < i1 and i0 < b1, "with two slots the training task runs overlap"
    # ... and so did the training work itself (the store's build records: when each ran, how long)
    (wb0, wb1), (wi0, wi1) = runs[2][3]
    assert wb0 < wi1 and wi0 < wb1, runs[2][3]
    (wb0, wb1), (wi0, wi1) = runs[1][3]
    assert wb1 <= wi0 + 1 or wi1 <= wb0 + 1, runs[1][3]  # one slot: one after the other (1 s resolution)
    assert runs[1][1]["scores"] == runs[2][1]["scores"]  # identical results
    one, two = runs[1][2], runs[2][2]
    assert one.keys() == two.keys() and len(one) == 2
    for role in one:
        assert all((one[role][k] == two[role][k]).all() for k in one[role])
