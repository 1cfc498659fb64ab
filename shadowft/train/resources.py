"""What a training job runs on: processes, nodes, strategy, launcher, attention kernel (CPU threads: `shadowft.threads`).

Resolved from the `train` section before anything starts, so the same config gives the same job on
the same machine: nothing here depends on the machine's momentary load.
"""

from __future__ import annotations

from shadowft.config import TrainConfig
from shadowft.errors import ShadowFTError
from shadowft.registry import lookup, settings_for
from shadowft.train.launchers import LAUNCHERS, Launcher, LaunchRequest
from shadowft.train.launchers.base import LaunchPlan

__all__ = ["LaunchPlan", "flash_attention_installed", "resolve_attn_implementation", "resolve_launch", "visible_gpus"]


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


def resolve_launch(spec: TrainConfig, *, gpus: int | None = None) -> LaunchPlan:
    """The launch plan for `spec` on this machine (`gpus` overrides the visible GPU count). The
    strategy and process counts are resolved here; the launcher (named, or chosen for `auto`) checks
    that it can run them and resolves its own settings (`shadowft.train.launchers.base`)."""
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
    name = spec.launcher
    if name == "auto":
        name = _auto_launcher(spec, dist, world, device)
    cls = lookup(LAUNCHERS, name, "launcher")
    req = _request(spec, name, dist, world, device)
    cls.check(req)
    return LaunchPlan(
        launcher=name,
        distributed=dist,
        num_processes=nproc,
        num_nodes=spec.num_nodes,
        node_rank=spec.node_rank,
        main_address=spec.main_address,
        main_port=spec.main_port,
        device=device,
        settings=cls.resolve(req),
    )


def _request(spec: TrainConfig, name: str, dist: str, world: int, device: str) -> LaunchRequest:
    settings = settings_for(spec, LAUNCHERS, name)
    assert settings is not None  # every launcher has a settings model (Launcher.Settings)
    return LaunchRequest(spec=spec, settings=settings, distributed=dist, world_size=world, device=device)  # type: ignore[arg-type]


def _auto_launcher(spec: TrainConfig, dist: str, world: int, device: str) -> str:
    """`train.launcher: auto`: the registered launcher with the highest `auto_priority` that suits the
    job (accelerate for FSDP / DeepSpeed or a config file, torchrun for several processes, else in-process)."""
    ranked: list[tuple[str, type[Launcher]]] = sorted(LAUNCHERS.items(), key=lambda kv: -kv[1].auto_priority)
    for name, cls in ranked:
        if cls.suits(_request(spec, name, dist, world, device)):
            return name
    raise ShadowFTError(
        f"no launcher runs {world} process(es) with train.distributed={dist} on {device}",
        hint=f"name one with train.launcher ({', '.join(LAUNCHERS)})",
    )
