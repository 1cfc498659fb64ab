"""What a training job runs on: processes, nodes, strategy, launcher, attention kernel (CPU threads: `shadowft.threads`).

Resolved from the `train` section before anything starts, so the same config gives the same job on
the same machine: nothing here depends on the machine's momentary load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shadowft.config import TrainConfig
from shadowft.errors import ShadowFTError

#: the shipped `accelerate launch` configs, by strategy (train.accelerate_config overrides)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
SHIPPED_CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "deepspeed": "deepspeed_zero3.yaml"}


def flash_attention_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def resolve_attn_implementation(choice: str, device: str) -> str:
    """auto -> flash_attention_2 on a GPU where flash-attn is installed, else sdpa."""
    if choice == "auto":
        return "flash_attention_2" if device == "cuda" and flash_attention_installed() else "sdpa"
    if choice == "flash_attention_2" and (device != "cuda" or not flash_attention_installed()):
        raise ShadowFTError(
            "train.attn_implementation=flash_attention_2 needs a CUDA GPU and the flash-attn package",
            hint="use sdpa (or auto), or install flash-attn on the GPU machine",
        )
    return choice


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class LaunchPlan:
    """How a training job starts: resolved from the `train` section (and the visible devices)."""

    launcher: str  # inprocess | torchrun | accelerate
    distributed: str  # none | ddp | fsdp | deepspeed
    num_processes: int  # per node
    num_nodes: int
    node_rank: int
    main_address: str
    main_port: int
    accelerate_config: str | None
    device: str  # cpu | cuda

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_nodes

    def global_batch(self, spec: TrainConfig) -> int:
        """Sequences per optimizer step over all ranks: batch_size x grad_accum x processes x nodes."""
        return spec.batch_size * spec.grad_accum * self.world_size

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "world_size": self.world_size}


def resolve_launch(spec: TrainConfig, *, gpus: int | None = None) -> LaunchPlan:
    """The launch plan for `spec` on this machine (`gpus` overrides the visible GPU count)."""
    gpus = visible_gpus() if gpus is None else gpus
    device = "cuda" if gpus > 0 else "cpu"
    nproc = spec.num_processes or max(1, gpus)
    world = nproc * spec.num_nodes
    dist = spec.distributed
    if dist == "auto":
        dist = "ddp" if world > 1 else "none"
    if dist == "none" and world > 1:
        raise ShadowFTError(
            f"train.distributed=none with {world} processes",
            hint="set train.distributed=ddp (or auto), or train.num_processes=1 and train.num_nodes=1",
        )
    if spec.node_rank >= spec.num_nodes:
        raise ShadowFTError(
            f"train.node_rank={spec.node_rank} but train.num_nodes={spec.num_nodes}",
            hint="node ranks run from 0 to num_nodes - 1",
        )
    if dist in ("fsdp", "deepspeed") and device != "cuda":
        raise ShadowFTError(
            f"train.distributed={dist} needs CUDA GPUs (none visible here)",
            hint="use train.distributed=ddp on CPU; FSDP and DeepSpeed ZeRO-3 run on GPU nodes",
        )
    launcher = spec.launcher
    if launcher == "auto":
        if dist in ("fsdp", "deepspeed") or spec.accelerate_config:
            launcher = "accelerate"
        elif world > 1:
            launcher = "torchrun"
        else:
            launcher = "inprocess"
    if launcher == "inprocess" and (world > 1 or dist != "none"):
        raise ShadowFTError(
            f"train.launcher=inprocess cannot run {world} process(es) with train.distributed={dist}",
            hint="set train.launcher=auto (torchrun / accelerate launch start one process per rank)",
        )
    if launcher == "torchrun" and dist in ("fsdp", "deepspeed"):
        raise ShadowFTError(
            f"train.distributed={dist} is configured through an accelerate config",
            hint="set train.launcher=accelerate (or auto)",
        )
    if launcher == "accelerate" and device == "cpu" and world > 1:
        raise ShadowFTError(
            "accelerate launch starts several CPU processes only through MPI, which shadowft does not configure",
            hint="on CPU use train.launcher=torchrun (or auto) for several processes",
        )
    config = spec.accelerate_config
    if launcher == "accelerate" and config is None:
        config = str(CONFIG_DIR / SHIPPED_CONFIGS["ddp" if dist == "none" else dist])
    return LaunchPlan(
        launcher=launcher,
        distributed=dist,
        num_processes=nproc,
        num_nodes=spec.num_nodes,
        node_rank=spec.node_rank,
        main_address=spec.main_address,
        main_port=spec.main_port,
        accelerate_config=config,
        device=device,
    )
