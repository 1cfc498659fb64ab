"""The launcher seam: how the processes that run the fit phase are started.

A launcher takes a `TrainJob` and returns a `FitOutcome`. In-process runs `fit` here; the
multi-process launchers (`process.py`: torchrun, accelerate launch) write the job to the work dir,
start one process per rank running the same `fit`, relay rank 0's progress events, and return an
outcome whose `save` copies the weights rank 0 wrote. Checkpoints and resume are the same for every launcher
(`shadowft.train.checkpoints`), decided before launch.
"""

from __future__ import annotations

from typing import ClassVar

from shadowft.train.job import FitOutcome, TrainJob
from shadowft.train.progress import ProgressFn


class Launcher:
    """Starts the fit phase of a training job. Subclasses set `name` and implement `launch`."""

    name: ClassVar[str]

    def launch(self, job: TrainJob, progress: ProgressFn | None) -> FitOutcome:
        raise NotImplementedError
