"""The plain-data hand-offs between the training phases (setup -> launcher/fit -> publish).

`TrainJob` is everything the fit phase needs, as JSON-able data: a multi-process launcher writes it
to a file that every rank reads. `FitOutcome` is what comes back to the publishing process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowft.config import TrainConfig


@dataclass(frozen=True)
class TrainJob:
    """One training run, resolved: inputs, spec, where it checkpoints and where it resumes from."""

    model_dir: Path
    data_dir: Path
    work_dir: Path
    spec: TrainConfig
    device: str
    precision: str
    resume: Path | None = None
    trust_remote_code: bool = False

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def to_json(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "data_dir": str(self.data_dir),
            "work_dir": str(self.work_dir),
            "spec": self.spec.model_dump(mode="json"),
            "device": self.device,
            "precision": self.precision,
            "resume": str(self.resume) if self.resume else None,
            "trust_remote_code": self.trust_remote_code,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainJob:
        return cls(
            model_dir=Path(data["model_dir"]),
            data_dir=Path(data["data_dir"]),
            work_dir=Path(data["work_dir"]),
            spec=TrainConfig.model_validate(data["spec"]),
            device=data["device"],
            precision=data["precision"],
            resume=Path(data["resume"]) if data.get("resume") else None,
            trust_remote_code=bool(data.get("trust_remote_code")),
        )


@dataclass
class FitOutcome:
    """The trained state, as the launcher reports it. `save(dir)` writes the trained weights there
    (in-process: from memory; a multi-process launcher: from what rank 0 left in the work dir)."""

    global_step: int
    max_steps: int
    epoch: float
    training_loss: float | None
    log_history: list[dict[str, Any]]
    samples: int
    trainable_params: int
    total_params: int
    save: Callable[[Path], None] = field(repr=False)
    reference_params: int = 0  # a separate reference model in memory (DPO, full); 0 = none
    #: FSDP / ZeRO-3: every rank must call `save` (the shards are gathered); else only rank 0 does
    collective_save: bool = False
    world_size: int = 1
    threads: int = 1
    attn_implementation: str = "sdpa"
    packing: bool = False

    def to_json(self) -> dict[str, Any]:
        """Everything but `save` (what a launched rank 0 hands back to the launcher)."""
        return {k: v for k, v in self.__dict__.items() if k != "save"}
