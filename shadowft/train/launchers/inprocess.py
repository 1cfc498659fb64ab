"""Run the fit phase in the calling process (one device, or CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shadowft.errors import ShadowFTError
from shadowft.train.launchers.base import Launcher, LaunchPlan, LaunchRequest

if TYPE_CHECKING:
    from shadowft.train.job import FitOutcome, TrainJob
    from shadowft.train.progress import ProgressFn


class InProcess(Launcher):
    """The default: train here, keep the model in memory for publishing."""

    name = "inprocess"

    @classmethod
    def suits(cls, req: LaunchRequest) -> bool:
        return req.world_size == 1

    @classmethod
    def check(cls, req: LaunchRequest) -> None:
        if req.world_size > 1 or req.distributed != "none":
            raise ShadowFTError(
                f"train.launcher=inprocess cannot run {req.world_size} process(es) with "
                f"train.distributed={req.distributed}",
                hint="set train.launcher=auto (torchrun / accelerate launch start one process per rank)",
            )

    def launch(self, job: TrainJob, plan: LaunchPlan, progress: ProgressFn | None) -> FitOutcome:
        from shadowft.train.fit import fit

        return fit(job, progress)
