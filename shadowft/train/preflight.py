"""Checks before a training job starts (before any model loads): the launch settings, the engine's
config (accelerate refusing an FSDP / ZeRO-3 config fails here, not after minutes of loading) and
whether the model fits on the devices (`shadowft.plan`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shadowft.config import TrainConfig
from shadowft.errors import ShadowFTError
from shadowft.train.resources import LaunchPlan, resolve_launch

#: accelerate's distributed_type for each train.distributed
_ACCELERATE_TYPES = {
    "none": ("NO", "MULTI_GPU", "MULTI_CPU"),
    "ddp": ("MULTI_GPU", "MULTI_CPU"),
    "fsdp": ("FSDP",),
    "deepspeed": ("DEEPSPEED",),
}


def check_accelerate_config(plan: LaunchPlan) -> None:
    """Run accelerate's own validation of the launch (config file + our arguments), and check that the
    file's strategy is train.distributed and that its backend is installed."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from shadowft.train.launchers.process import accelerate_args

    path = plan.accelerate_config
    if path is None or not Path(path).is_file():
        raise ShadowFTError(
            f"train.accelerate_config: no such file {path}",
            hint="point it at an `accelerate launch` config (the project ships configs/accelerate/*.yaml)",
        )
    try:
        cfg = load_config_from_file(path)
        args = launch_command_parser().parse_args(
            [f"--config_file={path}", *accelerate_args(plan), "-m", "shadowft.train.worker", "."]
        )
        _validate_launch_command(args)
    except (ValueError, TypeError, KeyError, SystemExit) as exc:
        raise ShadowFTError(
            f"accelerate refuses the config {path}: {exc}",
            hint="fix the file (`accelerate config` writes a valid one), or start from configs/accelerate/",
        ) from None
    kind = str(getattr(cfg.distributed_type, "value", cfg.distributed_type))
    if kind not in _ACCELERATE_TYPES[plan.distributed]:
        raise ShadowFTError(
            f"{path} sets distributed_type {kind}, but train.distributed is {plan.distributed}",
            hint=f"use a config with distributed_type {' or '.join(_ACCELERATE_TYPES[plan.distributed])}, "
            "or change train.distributed",
        )
    if plan.distributed == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ShadowFTError(
            "train.distributed=deepspeed needs the `deepspeed` package, which is not installed",
            hint="pip install deepspeed on the GPU machine (it is not part of shadowft's default install)",
        )


#: train.report_to -> the packages that can serve it (any one)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_tracker(report_to: str) -> None:
    """A tracker whose package is missing fails here, not after the model has loaded."""
    packages = TRACKER_PACKAGES.get(report_to, ())
    if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
        extra = 'pip install "shadowft[tensorboard]"' if report_to == "tensorboard" else f"pip install {report_to}"
        raise ShadowFTError(
            f"train.report_to={report_to} needs the `{packages[0]}` package, which is not installed",
            hint=f"{extra}, or set train.report_to=none",
        )


def preflight(model_dir: Path, data_dir: Path, spec: TrainConfig, *, trust_remote_code: bool = False) -> LaunchPlan:
    """Everything checkable before a model loads. -> the launch plan"""
    from shadowft.plan import check_fit, estimate_for_job

    plan = resolve_launch(spec)
    check_tracker(spec.report_to)
    if plan.launcher == "accelerate":
        check_accelerate_config(plan)
    check_fit(estimate_for_job(model_dir, data_dir, spec, plan, trust_remote_code=trust_remote_code))
    return plan
