"""`accelerate launch` with a config file: the shipped DDP / FSDP / ZeRO-3 configs, or yours.

Everything accelerate-specific lives here: its setting (`train.accelerate.config`), when `auto`
picks it (FSDP / DeepSpeed, or a config file given), the shipped config per strategy, the launch
arguments, and the preflight that runs accelerate's own validation of the file before any model
loads (a refused FSDP / ZeRO-3 config fails in seconds, not after minutes of loading).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from shadowft.errors import ShadowFTError
from shadowft.registry import SettingsModel
from shadowft.train.launchers.base import LaunchPlan, LaunchRequest
from shadowft.train.launchers.process import ProcessLauncher

if TYPE_CHECKING:
    from shadowft.train.job import TrainJob

#: the shipped `accelerate launch` configs, by strategy (train.accelerate.config overrides)
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "accelerate"
SHIPPED_CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero3.yaml"}

#: accelerate's distributed_type for each train.distributed
_ACCELERATE_TYPES = {
    "none": ("NO", "MULTI_GPU", "MULTI_CPU"),
    "ddp": ("MULTI_GPU", "MULTI_CPU"),
    "fsdp": ("FSDP",),
    "deepspeed": ("DEEPSPEED",),
}


class AccelerateSettings(SettingsModel):
    """`accelerate launch`'s settings."""

    config: str | None = Field(
        default=None,
        description="An `accelerate launch` config file (yours, or the project's configs/accelerate/*.yaml); "
        "empty = the shipped one for train.distributed. Setting it makes train.launcher auto pick accelerate.",
    )


class Accelerate(ProcessLauncher):
    """`accelerate launch` with a config file: FSDP, DeepSpeed ZeRO-3, or DDP with your own config."""

    name = "accelerate"
    Settings = AccelerateSettings
    auto_priority = 20

    @classmethod
    def suits(cls, req: LaunchRequest) -> bool:
        return req.distributed in ("fsdp", "deepspeed") or _config(req) is not None

    @classmethod
    def check(cls, req: LaunchRequest) -> None:
        if req.device == "cpu" and req.world_size > 1:
            raise ShadowFTError(
                "accelerate launch starts several CPU processes only through MPI, which shadowft does not configure",
                hint="on CPU use train.launcher=torchrun (or auto) for several processes",
            )

    @classmethod
    def resolve(cls, req: LaunchRequest) -> dict[str, Any]:
        config = _config(req) or str(
            CONFIG_DIR / SHIPPED_CONFIGS["ddp" if req.distributed == "none" else req.distributed]
        )
        return {"config": config}

    @classmethod
    def cache_key(cls, settings: SettingsModel) -> dict[str, Any]:
        # the key's name from before launchers had settings of their own (existing keys stay valid)
        return {"accelerate_config": getattr(settings, "config", None)}

    def preflight(self, plan: LaunchPlan) -> None:
        check_accelerate_config(plan)

    def command(self, job: TrainJob, plan: LaunchPlan, launch_dir: Path) -> list[str]:
        check_accelerate_config(plan)
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            f"--config_file={plan.settings['config']}",
            *accelerate_args(plan),
            "-m",
            "shadowft.train.worker",
            str(launch_dir),
        ]


def _config(req: LaunchRequest) -> str | None:
    return getattr(req.settings, "config", None)


def accelerate_args(plan: LaunchPlan) -> list[str]:
    """The process / node / rendezvous settings, which win over the config file's."""
    args = [
        f"--num_processes={plan.world_size}",
        f"--num_machines={plan.num_nodes}",
        f"--machine_rank={plan.node_rank}",
        f"--main_process_ip={plan.main_address}",
        f"--main_process_port={plan.main_port}",
    ]
    if plan.device == "cpu":
        args.append("--cpu")  # one process (accelerate starts several CPU processes only through MPI)
    elif plan.world_size > 1 and plan.distributed == "ddp":
        args.append("--multi_gpu")  # accelerate's name for DDP through torch.distributed.run
    return args


def check_accelerate_config(plan: LaunchPlan) -> None:
    """Run accelerate's own validation of the launch (config file + our arguments), and check that the
    file's strategy is train.distributed and that its backend is installed."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = plan.settings.get("config")
    if path is None or not Path(path).is_file():
        raise ShadowFTError(
            f"train.accelerate.config: no such file {path}",
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
