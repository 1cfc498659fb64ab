"""Checks before a training job starts (before any model loads): the launch settings, the launcher's
own preflight (accelerate refusing an FSDP / ZeRO-3 config fails here, not after minutes of loading),
the tracker package, and whether the model fits on the devices (`shadowft.plan`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shadowft.config import TrainConfig
from shadowft.errors import ShadowFTError
from shadowft.train.launchers import get_launcher
from shadowft.train.objectives import get_objective
from shadowft.train.resources import LaunchPlan, resolve_launch

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


def check_launch(spec: TrainConfig) -> LaunchPlan:
    """The checks that need no model: the launch can run here (strategy, processes, the launcher's
    own preflight, e.g. accelerate's config) and the tracker is installed. -> the launch plan"""
    plan = resolve_launch(spec)
    check_tracker(spec.report_to)
    get_launcher(plan.launcher).preflight(plan)
    get_objective(spec.objective).preflight(spec)  # e.g. GRPO's vLLM without a GPU, code rewards' opt-in
    return plan


def preflight(model_dir: Path, data_dir: Path, spec: TrainConfig, *, trust_remote_code: bool = False) -> LaunchPlan:
    """Everything checkable before a model loads. -> the launch plan"""
    from shadowft.plan import check_fit, estimate_for_job

    plan = check_launch(spec)
    check_fit(estimate_for_job(model_dir, data_dir, spec, plan, trust_remote_code=trust_remote_code))
    return plan
