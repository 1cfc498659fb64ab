"""Launchers by name (`train.launcher`). Add one: a module here + a line in `LAUNCHERS` (see
`base.Launcher` for what a launcher owns: settings, its part of `auto`, checks, preflight)."""

from __future__ import annotations

from shadowft.registry import lookup
from shadowft.train.launchers.accelerate import Accelerate
from shadowft.train.launchers.base import Launcher, LaunchRequest
from shadowft.train.launchers.inprocess import InProcess
from shadowft.train.launchers.process import Torchrun
from shadowft.train.launchers.raytrain import RayTrain

LAUNCHERS: dict[str, type[Launcher]] = {
    "inprocess": InProcess,
    "torchrun": Torchrun,
    "accelerate": Accelerate,
    "ray-train": RayTrain,
}
DEFAULT_LAUNCHER = "inprocess"


def get_launcher(name: str = DEFAULT_LAUNCHER) -> Launcher:
    """A new instance of the launcher called `name`."""
    return lookup(LAUNCHERS, name, "launcher")()


__all__ = ["DEFAULT_LAUNCHER", "LAUNCHERS", "LaunchRequest", "Launcher", "get_launcher"]
