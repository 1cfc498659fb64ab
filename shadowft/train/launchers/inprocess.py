"""Run the fit phase in the calling process (one device, or CPU)."""

from __future__ import annotations

from shadowft.train.job import FitOutcome, TrainJob
from shadowft.train.launchers.base import Launcher
from shadowft.train.progress import ProgressFn


class InProcess(Launcher):
    """The default: train here, keep the model in memory for publishing."""

    name = "inprocess"

    def launch(self, job: TrainJob, progress: ProgressFn | None) -> FitOutcome:
        from shadowft.train.fit import fit

        return fit(job, progress)
