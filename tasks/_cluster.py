"""Heavy stages as Ray tasks (`resources.cluster` other than local), through prefect-ray's RayTaskRunner.

Only the heavy stages (tasks tagged `HEAVY_TAG`: trainings, evaluations) are submitted in the flow,
so only they go to Ray; each asks for `devices_per_stage` GPUs (none on a cluster without GPUs) and
`cpus_per_stage` CPUs, and Ray places it on a node with those free. Ray's scheduler is the queue there:
no slot of `tasks._slots` is taken on top (one mechanism per case). The light stages run in the flow's
own process.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prefect_ray.context import remote_options
from prefect_ray.task_runners import PrefectRayFuture, RayTaskRunner

from shadowft.cluster import import_ray, ray_address
from shadowft.config import ResourcesConfig
from shadowft.errors import ShadowFTError

#: Environment variables of the driver that Ray workers get too (offline flags, threads, the store).
FORWARDED = ("SHADOWFT_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_NUM_THREADS", "DO_NOT_TRACK")


class HeavyStageOnRay(PrefectRayFuture):
    """A heavy stage's Ray future. A stage lost with its node (Ray's NodeDiedError, a crashed worker)
    fails naming the stage and the node, and its task run is marked Crashed: prefect-ray would raise
    Ray's bare error and leave the task run Running in the UI forever (its process died with the node)."""

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        try:
            return super().result(timeout, raise_on_failure)
        except Exception as exc:
            if not _is_lost_stage(exc):
                raise
            raise self._lost(exc) from exc

    def wait(self, timeout: float | None = None) -> None:
        from prefect.states import Crashed, State, exception_to_crashed_state
        from prefect.utilities.asyncutils import run_coro_as_sync

        state: State[Any]
        try:
            self.result(timeout, raise_on_failure=False)
            return
        except TimeoutError:
            return
        except ShadowFTError as lost:  # the server's task run is Crashed already (`_lost`)
            state = Crashed(message=str(lost))
        except Exception as exc:  # as prefect-ray's own wait does
            state = run_coro_as_sync(exception_to_crashed_state(exc))
        self._final_state = state

    #: the error of a lost stage, made once: `__exit__`'s wait after the flow's own result would
    #: otherwise ask the server again and set the Crashed state twice
    _lost_as: ShadowFTError | None = None

    def _lost(self, exc: BaseException) -> ShadowFTError:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        if self._lost_as is not None:
            return self._lost_as
        where, name = _node_of(str(exc)), "a heavy stage"
        try:
            with get_client(sync_client=True) as client:
                name = client.read_task_run(self.task_run_id).name
                crashed = f"{name} was lost with {where}: {type(exc).__name__}"
                client.set_task_run_state(self.task_run_id, Crashed(message=crashed), force=True)
        except Exception:  # the server unreachable: the lost node still has to be named
            pass
        self._lost_as = ShadowFTError(
            f"{name} was lost with {where}: {type(exc).__name__} (the node died, was preempted or stopped "
            "while the stage ran)",
            hint="rerun the same config (shadowft run, or Retry in the Prefect UI): finished stages come from "
            "the store and a training resumes from its last checkpoint; Ray does not retry a heavy stage "
            "itself (max_retries=0), as a silent second run would double its cost",
        )
        return self._lost_as


def _is_lost_stage(exc: BaseException) -> bool:
    """Ray's errors for a task whose process or node went away (not the stage's own exception)."""
    ray = import_ray()
    return isinstance(exc, ray.exceptions.RayError) and not isinstance(exc, ray.exceptions.RayTaskError)


def _node_of(message: str) -> str:
    """`Ray node 1a2b3c4d (10.0.0.7)` from Ray's error text; `its Ray node` when it names none."""
    node = re.search(r"node ID: ([0-9a-f]+)", message)
    ip = re.search(r"Node IP: ([^,\s]+)", message)
    if not node:
        return "its Ray node"
    return f"Ray node {node.group(1)[:8]}" + (f" ({ip.group(1)})" if ip else "")


class HeavyStagesOnRay(RayTaskRunner):
    """RayTaskRunner that asks Ray for a heavy stage's GPUs and CPUs (other tasks: Ray's defaults), with
    no Ray-level retry of a heavy stage, and whose futures name a node that took a stage down with it."""

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None, **options: Any):
        super().__init__(address=address, init_kwargs=init_kwargs)
        self.options = options

    def __enter__(self) -> HeavyStagesOnRay:
        self.in_flight: list[HeavyStageOnRay] = []
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        """As Prefect's thread pool does, a heavy stage still running when the flow ends (another stage
        failed, a node was lost) finishes and is stored, so the rerun takes it from the store; its task
        run ends in a final state. On Ctrl-C or a termination signal they are stopped at once: Ray
        would otherwise keep running them on a cluster this run did not start."""
        if exc_info[0] is None or issubclass(exc_info[0], Exception):
            for future in self.in_flight:
                future.wait()
        else:
            ray = import_ray()
            for future in self.in_flight:
                ray.cancel(future.wrapped_future, force=True)
        super().__exit__(*exc_info)

    def duplicate(self) -> HeavyStagesOnRay:
        return type(self)(address=self.address, init_kwargs=self.init_kwargs, **self.options)

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:  # type: ignore[override]
        from tasks._stage import HEAVY_TAG

        if HEAVY_TAG not in (task.tags or set()):
            return super().submit(task, parameters, wait_for, dependencies)
        gpus = self.options["num_gpus"] if import_ray().cluster_resources().get("GPU", 0) else 0
        with remote_options(num_gpus=gpus, num_cpus=self.options["num_cpus"], max_retries=0):
            future = super().submit(task, parameters, wait_for, dependencies)
        heavy = HeavyStageOnRay(task_run_id=future.task_run_id, wrapped_future=future.wrapped_future)
        self.in_flight.append(heavy)
        return heavy


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
    init: dict[str, Any] = {"runtime_env": {"env_vars": worker_env()}}
    if res.cluster == "auto":  # prefect-ray calls ray.init() for "auto", which starts a new local Ray
        init["address"] = "auto"  # when no cluster is found; "auto" refuses instead (ConnectionError)
    return HeavyStagesOnRay(
        address=ray_address(res.cluster),
        init_kwargs=init,
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
