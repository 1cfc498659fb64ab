"""`shadowft plan`: the launch plan and per-device memory estimate of a run, without running it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from shadowft.console import console
from shadowft.errors import ShadowFTError


def plan(
    config: Annotated[Optional[Path], typer.Argument(help="Run config YAML (default: the built-in defaults).")] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set train.method=full (repeatable).")
    ] = None,
    gpus: Annotated[
        Optional[int], typer.Option(help="Plan for this many GPUs per node instead of the visible ones.")
    ] = None,
    gpu_memory: Annotated[Optional[float], typer.Option(help="GiB per GPU (default: the visible GPU's).")] = None,
    sizing_table: Annotated[
        bool, typer.Option("--sizing-table", help="Print the paper's models x LoRA / full x 1 / 8 GPUs table.")
    ] = False,
) -> None:
    """Print how CONFIG's training would launch and the memory each device needs (an estimate)."""
    from shadowft import plan as planning
    from shadowft.config import load_config

    if sizing_table:
        console.print(planning.sizing_table(gpu_gib=gpu_memory or 80.0), highlight=False, soft_wrap=True)
        return
    cfg = load_config(config, set_ or [])
    if gpus and gpu_memory is None:
        gpu_memory = 80.0
    launch, est = planning.plan_run(cfg, gpus=gpus, gpu_gib=gpu_memory)
    spec = cfg.train
    console.print(
        f"launch     {launch.launcher}: {launch.distributed}, {launch.num_nodes} node(s) x "
        f"{launch.num_processes} process(es) = world size {launch.world_size} on {launch.device}\n"
        f"batch      {spec.batch_size} x grad_accum {spec.grad_accum} x world size {launch.world_size} = global "
        f"batch {launch.global_batch(spec)}",
        highlight=False,
        soft_wrap=True,
    )
    for key, value in launch.settings.items():  # the launcher's own, resolved (accelerate: its config file)
        if value is not None:
            console.print(f"{key:<10} {value}", highlight=False, soft_wrap=True)
    console.print(planning.format_estimate(est), highlight=False, soft_wrap=True)
    if not est.fits:
        try:
            planning.check_fit(est)
        except ShadowFTError as exc:
            if gpus is None:  # planned for the devices this machine has: say so, and how to plan for others
                fits = (exc.hint or "").split(". `shadowft plan", 1)[0]  # this command is that command
                exc.hint = f"{fits}. {_planned_here(launch.device, launch.num_processes, est.device_bytes, config)}"
            raise


def _planned_here(device: str, count: int, device_bytes: float, config: Path | None) -> str:
    """Which devices the plan was made for, and the options that plan for GPUs this machine lacks."""
    gib = device_bytes / 2**30
    here = (
        f"{count} visible GPU(s) of {gib:.1f} GiB" if device == "cuda" else f"{device}, {gib:.1f} GiB, no GPU visible"
    )
    return (
        f"This plan is for this machine ({here}); to plan for GPUs, give their number per node and GiB each: "
        f"shadowft plan {config or ''} --gpus 8 --gpu-memory 80".replace("  ", " ")
    )
