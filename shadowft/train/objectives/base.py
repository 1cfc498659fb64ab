"""The objective seam: what loss a training run optimises, and on which data columns.

An objective supplies the pieces of a transformers-style trainer that depend on the loss: the
dataset columns it needs, the collator, the `TrainingArguments` class and the `Trainer` class (TRL's
trainers are `Trainer` subclasses with their own args classes, e.g. `DPOTrainer` + `DPOConfig`), plus
any extra constructor arguments. Model loading, the method (lora / full), checkpoints and publishing
are shared and stay out of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from shadowft.errors import ShadowFTError


@dataclass
class TrainerParts:
    """What the fit phase hands to an objective to build its trainer."""

    model: Any
    tokenizer: Any
    dataset: Any
    args: dict[str, Any]  # TrainingArguments keyword arguments shared by every objective
    callbacks: list[Any]
    device: str
    spec: Any = None  # the TrainConfig (objective settings such as DPO's beta)
    data_dir: Path | None = None  # the prepared data (its stats.json records the cutoff length)
    packing: bool = False  # data.packing: padding-free batches (only objectives with supports_packing)


class Objective:
    """A training objective. Subclasses set `name` and `columns` and implement `collator`."""

    name: ClassVar[str]
    #: dataset columns the objective reads (checked before the model loads)
    columns: ClassVar[tuple[str, ...]]
    #: columns holding token ids (checked against the model's vocabulary)
    token_columns: ClassVar[tuple[str, ...]] = ("input_ids",)
    #: whether `packed_collator` exists (data.packing)
    supports_packing: ClassVar[bool] = False

    def check_dataset(self, dataset: Any, data_dir: Path) -> None:
        """Fail early, with a hint, when the prepared data cannot feed this objective."""
        if len(dataset) == 0:
            raise ShadowFTError(f"the prepared dataset in {data_dir} is empty")
        missing = [c for c in self.columns if c not in dataset.column_names]
        if missing:
            raise ShadowFTError(
                f"the prepared dataset in {data_dir} lacks the column(s) {', '.join(missing)} that the "
                f"{self.name!r} objective needs (it has: {', '.join(dataset.column_names)})",
                hint="prepare the data for this objective, or choose another train.objective",
            )

    def max_token_id(self, dataset: Any) -> int:
        return max(max(x) for c in self.token_columns for x in dataset[c] if len(x))

    def collator(self, tokenizer: Any, device: str) -> Any:
        """The data collator (None lets the trainer class use its own)."""
        raise NotImplementedError

    def packed_collator(self, tokenizer: Any) -> Any:
        """The padding-free collator for data.packing (objectives with `supports_packing`)."""
        raise NotImplementedError

    def args_class(self) -> type:
        """The `TrainingArguments` class (or a subclass such as TRL's `DPOConfig`)."""
        from transformers import TrainingArguments

        return TrainingArguments

    def trainer_class(self) -> type:
        """The `Trainer` class (or a subclass such as TRL's `DPOTrainer`)."""
        from transformers import Trainer

        return Trainer

    def extra_args(self) -> dict[str, Any]:
        """Objective-specific arguments for `args_class` (e.g. DPO's beta)."""
        return {}

    def reference_params(self, trainer: Any) -> int:
        """Parameters of a separate reference model the objective holds in memory (none for SFT)."""
        return 0

    def build_trainer(self, parts: TrainerParts) -> Any:
        """The trainer for this objective; override for trainers with another constructor."""
        args = self.args_class()(**parts.args, **self.extra_args())
        return self.trainer_class()(
            model=parts.model,
            args=args,
            train_dataset=parts.dataset,
            data_collator=(
                self.packed_collator(parts.tokenizer) if parts.packing else self.collator(parts.tokenizer, parts.device)
            ),
            callbacks=parts.callbacks,
        )
