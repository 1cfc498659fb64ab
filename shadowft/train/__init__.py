"""Fine-tuning (stage 3): `train_model` and the seams it is built from.

    train_model = setup -> launcher.launch(fit) -> publish

- `objectives/`: the loss (today `sft`), selected by `train.objective`;
- `methods`: what is trained (`lora` adapter or `full` weights), selected by `train.method`;
- `launchers/`: how the fit phase's processes start (`inprocess`, `torchrun`, `accelerate`), chosen
  from the `train` section by `resources.resolve_launch`; `worker` is one rank of a launched job.

Importing this package loads no transformers, PEFT or TRL; the phases import them when they run.
"""

from shadowft.train.checkpoints import CHECKPOINT_PREFIX, complete_checkpoints
from shadowft.train.objectives.sft import PadCollator
from shadowft.train.progress import ProgressFn
from shadowft.train.run import TrainResult, publish, resolve_precision, setup, train_model

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
