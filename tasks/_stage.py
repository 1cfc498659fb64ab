"""What every stage task shares: the store, the cache key, and the task options.

Prefect's cache key of a stage task is the stage's artifact key plus the build id of the artifact
(`ArtifactStore.cache_token`): a stage whose artifact exists shows as Cached, across runs and
deployments, and a deleted artifact gets a new key, so Prefect never answers with a dangling path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shadowft import interrupt
from shadowft.stages import StageSpec
from shadowft.store import Artifact, ArtifactStore

SpecFn = Callable[..., StageSpec]


def store_at(root: str | Path) -> ArtifactStore:
    return ArtifactStore(root)


def _spec(spec_fn: SpecFn, args: dict[str, Any]) -> tuple[StageSpec, ArtifactStore]:
    store = store_at(args["store_root"])
    params = inspect.signature(spec_fn).parameters
    kwargs = {k: v for k, v in args.items() if k in params}
    if "store" in params:
        kwargs["store"] = store
    return spec_fn(**kwargs), store


def stage_cache_key(spec_fn: SpecFn) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` computing the artifact's cache token from the task's inputs."""

    def key_fn(_ctx: Any, inputs: dict[str, Any]) -> str:
        spec, store = _spec(spec_fn, inputs)
        return f"shadowft-{spec.stage}-{store.cache_token(spec.stage, spec.key)}"

    return key_fn


def build_stage(spec_fn: SpecFn, **args: Any) -> tuple[Artifact, bool]:
    """Build (or reuse) the stage's artifact. -> (artifact, built now)"""
    from shadowft.stages import run

    spec, store = _spec(spec_fn, args)
    with interrupt.stage(_task_run_name(spec.stage)):  # what Ctrl-C says was running
        return run(spec, store)


def _task_run_name(default: str) -> str:
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return ctx.task_run.name if ctx is not None else default


def stage_options(spec_fn: SpecFn, name: str, **extra: Any) -> dict[str, Any]:
    """Task options for a cached stage."""
    return {
        "name": name,
        "task_run_name": extra.pop("task_run_name", name),
        "cache_key_fn": stage_cache_key(spec_fn),
        "persist_result": True,
        "result_serializer": "json",
        **extra,
    }


def artifact_key_name(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


# Charts up to this size are embedded in markdown artifacts (the Prefect UI shows them inline).
MAX_INLINE_CHART = 512 * 1024


def inline_chart(chart: Path) -> str:
    """A markdown section embedding the PNG as a data URI, or "" when absent or too large."""
    import base64

    if not chart.exists() or chart.stat().st_size > MAX_INLINE_CHART:
        return ""
    return f"## Chart\n\n![chart](data:image/png;base64,{base64.b64encode(chart.read_bytes()).decode()})\n\n"


# -- heavy stages in slots --------------------------------------------------------------------------

#: Heavy stage tasks carry this tag (filter them in the UI). The slots are file locks under the store,
#: or with SHADOWFT_SLOTS=prefect and a Prefect server Prefect's leased global concurrency limits
#: (`tasks._slots` says why: one mechanism per case).
HEAVY_TAG = "shadowft-heavy-stage"


def _build_stage_in_child(spec_fn: SpecFn, args: dict[str, Any], progress: bool) -> tuple[Artifact, bool]:
    from shadowft.resources import child_progress

    return build_stage(spec_fn, **args, **({"progress": child_progress} if progress else {}))


def build_stage_in_slot(spec_fn: SpecFn, resources: Any, label: str, **args: Any) -> tuple[Artifact, bool]:
    """Build a heavy stage (training, evaluation) once a slot is free: a file lock per slot under
    the store, or with SHADOWFT_SLOTS=prefect and a Prefect server a leased Prefect concurrency limit
    per slot (the UI's concurrency page shows who holds it; `tasks._slots`); the wait and the slot taken are logged to
    the task run. With several slots, or GPUs, the stage runs in a process of its own that sees only
    its slot's devices; with one CPU slot, in this process as before. As a Ray task (a cluster), Ray
    has placed it and chosen its GPUs: it runs at once, in the Ray worker. Where a stage was built is
    recorded in the store (`shadowft.cluster.record_placement`) for the run folder's report."""
    from prefect.logging import get_run_logger

    from shadowft.cluster import here, in_ray_task, record_placement

    if in_ray_task():
        with interrupt.stage(label):
            art, built = build_stage(spec_fn, **args)
        if built:
            record_placement(args["store_root"], art.stage, art.key, art.build_id, here())
        get_run_logger().info("%s ran on Ray node %s", label, here())
        return art, built
    art, built, devices = _build_in_local_slot(spec_fn, resources, label, args)
    if built:
        record_placement(args["store_root"], art.stage, art.key, art.build_id, here(devices))
    return art, built


def _build_in_local_slot(
    spec_fn: SpecFn, resources: Any, label: str, args: dict[str, Any]
) -> tuple[Artifact, bool, list[int]]:
    """This machine: wait for a slot, then build (in this process, or one of its own). -> (.., devices)"""
    from prefect.logging import get_run_logger

    from shadowft.resources import SlotPool, plan_slots, run_in_process
    from tasks._slots import LeasedSlots, leased_slots_wanted

    logger = get_run_logger()
    slots = plan_slots(resources)
    pool: LeasedSlots | SlotPool = (
        LeasedSlots(slots) if leased_slots_wanted() else SlotPool(Path(args["store_root"]) / "slots", slots)
    )
    busy = f"{label} waits for a free slot (all {len(slots)} busy)"
    # interrupt.stage: what Ctrl-C says was running (also while waiting for a slot)
    with interrupt.stage(label), pool.acquire(on_wait=lambda: logger.info(busy)) as slot:
        if len(slots) == 1 and not slot.devices:
            return (*build_stage(spec_fn, **args), [])
        logger.info("%s runs in slot %d (devices: %s)", label, slot.index, slot.devices or "cpu")
        progress = args.pop("progress", None)
        art, built = run_in_process(
            _build_stage_in_child, spec_fn, args, progress is not None, env=slot.env(), progress=progress
        )
        return art, built, slot.devices
