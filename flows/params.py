"""A flow run's parameters: `overrides` on top of `config`, and a first log line saying where they came from.

A deployment run started with `-p config=...` replaces the whole config (a partial one is filled
with the built-in defaults, not the deployment's). `overrides` (`key=value`, the CLI's `--set`)
change only what they name, on top of the deployment's own config:

    prefect deployment run shadow-ft/manual -p 'overrides=["train.seed=7", "eval.limit=50"]'
"""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext
from prefect.logging import get_run_logger

from shadowft.config import RunConfig, apply_overrides


def with_overrides(config: RunConfig, overrides: list[str] | None) -> RunConfig:
    """`config` with `overrides` applied (errors name the override); logs where the config came from."""
    overrides = list(overrides or [])
    applied = apply_overrides(config, overrides)
    line = config_source(overrides)
    if line:
        get_run_logger().info(line)
    return applied


def config_source(overrides: list[str]) -> str | None:
    """The line for a deployment run (e.g. `config: the defaults of deployment 'manual'; overrides:
    train.seed=7`) or a run given overrides; None for a plain call without (the CLI applies --set)."""
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    said = f"overrides: {', '.join(overrides)}" if overrides else "no overrides"
    if run is None or run.deployment_id is None:
        return f"config: as given; {said}" if overrides else None
    return f"config: {_deployment_origin(run)}; {said}"


def _deployment_origin(run: Any) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(run.deployment_id)
    given = (run.parameters or {}).get("config")
    defaults = (deployment.parameters or {}).get("config")
    name = deployment.name
    if given is None:
        return f"the built-in defaults (deployment {name!r} sets no config)"
    if given == defaults:
        return f"the defaults of deployment {name!r}"
    if defaults is None:
        return f"given for this run (deployment {name!r} sets no config)"
    return f"given for this run, in place of the defaults of deployment {name!r} (overrides change only what they name)"
