"""Fine-tuning (stage 3): `train_model` and the seams it is built from.

    train_model = setup -> launcher.launch(fit) -> publish

- `objectives/`: the loss (`sft`, `dpo`, ...), selected by `train.objective`;
- `methods`: what is trained (`lora` adapter or `full` weights), selected by `train.method`;
- `launchers/`: how the fit phase's processes start (`inprocess`, `torchrun`, `accelerate`), chosen
  from the `train` section by `resources.resolve_launch`; `worker` is one rank of a launched job.

The names below are imported on first use (module `__getattr__`): `shadowft.config` imports the
objective and launcher registries, which live in this package, so importing the package must not
import `train.run` (which imports the config). Importing it loads no transformers, PEFT or TRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadowft.train.checkpoints import CHECKPOINT_PREFIX, complete_checkpoints
    from shadowft.train.objectives.sft import PadCollator
    from shadowft.train.progress import ProgressFn
    from shadowft.train.run import TrainResult, publish, resolve_precision, setup, train_model

_LAZY = {
    "CHECKPOINT_PREFIX": "shadowft.train.checkpoints",
    "complete_checkpoints": "shadowft.train.checkpoints",
    "PadCollator": "shadowft.train.objectives.sft",
    "ProgressFn": "shadowft.train.progress",
    "TrainResult": "shadowft.train.run",
    "publish": "shadowft.train.run",
    "resolve_precision": "shadowft.train.run",
    "setup": "shadowft.train.run",
    "train_model": "shadowft.train.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHECKPOINT_PREFIX",
    "PadCollator",
    "ProgressFn",
    "TrainResult",
    "complete_checkpoints",
    "publish",
    "resolve_precision",
    "setup",
    "train_model",
]
