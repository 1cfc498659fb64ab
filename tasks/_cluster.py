"""Heavy stages as Ray tasks (`resources.cluster` other than local), through prefect-ray's RayTaskRunner.

Only the heavy stages (tasks tagged `HEAVY_TAG`: trainings, evaluations) are submitted in the flow,
so only they go to Ray; each asks for `devices_per_stage` GPUs (none on a cluster without GPUs) and
`cpus_per_stage` CPUs, and Ray places it on a node with those free. Ray's scheduler is the queue there:
no slot of `tasks._slots` is taken on top (one mechanism per case). The light stages run in the flow's
own process.
"""

from __future__ import annotations

import os
from typing import Any

from prefect_ray.context import remote_options
from prefect_ray.task_runners import RayTaskRunner

from shadowft.cluster import import_ray, ray_address
from shadowft.config import ResourcesConfig
from shadowft.errors import ShadowFTError

#: Environment variables of the driver that Ray workers get too (offline flags, threads, the store).
FORWARDED = ("SHADOWFT_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_NUM_THREADS", "DO_NOT_TRACK")


class HeavyStagesOnRay(RayTaskRunner):
    """RayTaskRunner that asks Ray for a heavy stage's GPUs and CPUs (other tasks: Ray's defaults)."""

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None, **options: Any):
        super().__init__(address=address, init_kwargs=init_kwargs)
        self.options = options

    def duplicate(self) -> HeavyStagesOnRay:
        return type(self)(address=self.address, init_kwargs=self.init_kwargs, **self.options)

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:  # type: ignore[override]
        from tasks._stage import HEAVY_TAG

        if HEAVY_TAG not in (task.tags or set()):
            return super().submit(task, parameters, wait_for, dependencies)
        gpus = self.options["num_gpus"] if import_ray().cluster_resources().get("GPU", 0) else 0
        with remote_options(num_gpus=gpus, num_cpus=self.options["num_cpus"]):
            return super().submit(task, parameters, wait_for, dependencies)


def worker_env() -> dict[str, str]:
    """What a Ray worker needs to report to the same Prefect server and share results and the store."""
    from prefect.settings import PREFECT_API_URL, get_current_settings

    api = PREFECT_API_URL.value()
    if not api:
        raise ShadowFTError(
            "resources.cluster names a Ray cluster but no Prefect server is configured",
            hint="start one every node reaches (prefect server start --host <this node's cluster address>) and set PREFECT_API_URL",
        )
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}
    env["PREFECT_API_URL"] = api
    # cached results are read by whichever process needs them next: one storage for every node
    env["PREFECT_LOCAL_STORAGE_PATH"] = str(get_current_settings().results.local_storage_path)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def task_runner_for(res: ResourcesConfig) -> HeavyStagesOnRay | None:
    """The flow's task runner for `res.cluster` (None: local, Prefect's default thread pool)."""
    if res.cluster == "local":
        return None
    import_ray()  # a clear error before the flow starts when ray is missing
    return HeavyStagesOnRay(
        address=ray_address(res.cluster),
        init_kwargs={"runtime_env": {"env_vars": worker_env()}},
        num_gpus=res.devices_per_stage,
        num_cpus=res.cpus_per_stage,
    )


def check_flow_on_ray(res: ResourcesConfig) -> None:
    """Inside the flow: `resources.cluster` names a Ray cluster, so the flow must run with the Ray task
    runner (`flows.shadow_ft.for_cluster`, as `shadowft run` does); a flow started another way (a
    deployment of the plain flow) would run its heavy stages here while the config says Ray."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or not isinstance(ctx.task_runner, RayTaskRunner):
        raise ShadowFTError(
            f"resources.cluster={res.cluster} but this flow run does not use the Ray task runner",
            hint="start it with `shadowft run`, or run flows.shadow_ft.for_cluster(config) instead of the plain "
            "flow (a deployment: deploy for_cluster(config)); or set resources.cluster=local",
        )
