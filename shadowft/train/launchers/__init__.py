"""Launchers by name. Add one: a module here + a line in `LAUNCHERS`."""

from __future__ import annotations

from shadowft.registry import lookup
from shadowft.train.launchers.base import Launcher
from shadowft.train.launchers.inprocess import InProcess
from shadowft.train.launchers.process import Accelerate, Torchrun

LAUNCHERS: dict[str, type[Launcher]] = {"inprocess": InProcess, "torchrun": Torchrun, "accelerate": Accelerate}
DEFAULT_LAUNCHER = "inprocess"


def get_launcher(name: str = DEFAULT_LAUNCHER) -> Launcher:
    """A new instance of the launcher called `name`."""
    return lookup(LAUNCHERS, name, "launcher")()


__all__ = ["DEFAULT_LAUNCHER", "LAUNCHERS", "Launcher", "get_launcher"]
