"""The objective seam: what loss a training run optimises, on which data, prepared how.

An objective owns everything that varies with the loss, so that no stage or config section names it:

- its settings (`Settings`, a pydantic model): the config gets a sub-section `train.<name>` built
  from the registry (`shadowft.registry.with_settings_sections`), and only the chosen objective's
  sub-section enters the train stage's cache key;
- its default learning rate per training method (`default_lr`);
- its data: `prepare_data` (the data stage calls it) and `data_key` (its part of the data stage's key);
- its trainer: the dataset columns it needs, the collator, the `TrainingArguments` class and the
  `Trainer` class (TRL's trainers are `Trainer` subclasses with their own args classes, e.g.
  `DPOTrainer` + `DPOConfig`), plus any extra constructor arguments.

Model loading, the method (lora / full), checkpoints and publishing are shared and stay out of it.
The top level of an objective module imports only the stdlib, pydantic, shadowft.errors,
shadowft.registry and this module (the config imports the registry); the rest goes inside functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel

from shadowft.errors import ShadowFTError
from shadowft.registry import SettingsModel

if TYPE_CHECKING:
    from shadowft.config import DataConfig, TrainConfig

#: The paper's learning rates (LoRA 2e-4, full 1e-5): the default of an objective that sets none.
PAPER_LR: Mapping[str, float] = {"lora": 2e-4, "full": 1e-5}


class NoSettings(SettingsModel):
    """An objective without settings of its own (no `train.<name>` sub-section)."""


class PreparedData(Protocol):
    """What `Objective.prepare_data` returns: the counts the data stage records in its manifest."""

    @property
    def samples(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def truncated(self) -> int: ...


@dataclass
class TrainerParts:
    """What the fit phase hands to an objective to build its trainer."""

    model: Any
    tokenizer: Any
    dataset: Any
    args: dict[str, Any]  # TrainingArguments keyword arguments shared by every objective
    callbacks: list[Any]
    device: str
    spec: Any = None  # the TrainConfig (the objective's settings: `Objective.settings(spec)`)
    data_dir: Path | None = None  # the prepared data (its stats.json records the cutoff length)
    packing: bool = False  # data.packing: padding-free batches (only objectives with supports_packing)


class Objective:
    """A training objective. Subclasses set `name`, `summary` and `columns`, implement `collator`
    (or `build_trainer`) and `prepare_data`; `Settings` and `default_lr` when they differ."""

    name: ClassVar[str]
    #: one line: the `train.objective` choice in the UI and in "unknown objective" messages
    summary: ClassVar[str] = ""
    #: the objective's own settings, the config's `train.<name>` sub-section (none: `NoSettings`)
    Settings: ClassVar[type[BaseModel]] = NoSettings
    #: the learning rate when `train.lr` is empty, per training method (`train.method`)
    default_lr: ClassVar[Mapping[str, float]] = PAPER_LR
    #: whether the loss can choose the graft's alpha on the validation split (graft.alpha auto)
    selects_alpha: ClassVar[bool] = False
    #: dataset columns the objective reads (checked before the model loads)
    columns: ClassVar[tuple[str, ...]]
    #: columns holding token ids (checked against the model's vocabulary)
    token_columns: ClassVar[tuple[str, ...]] = ("input_ids",)
    #: whether `packed_collator` exists (data.packing)
    supports_packing: ClassVar[bool] = False
    #: sequences the model runs per sample of a batch (the memory estimate; DPO's pair: 2)
    sequences_per_sample: ClassVar[int] = 1

    def generated_tokens(self, spec: TrainConfig) -> int:
        """Tokens the trainer generates after each sample and then trains on (the memory estimate's
        sequence is the longest sample plus these; GRPO's completions)."""
        return 0

    # -- settings and checks (config load time) ---------------------------------------------------

    def settings(self, spec: TrainConfig) -> Any:
        """This objective's settings in the train section (its defaults when the section has none)."""
        from shadowft.registry import settings_for

        found = settings_for(spec, {self.name: type(self)}, self.name)
        return found if found is not None else self.Settings()

    def check_train(self, spec: TrainConfig) -> None:
        """Refuse (ValueError, reported with the config's key) a train section this objective's
        trainer would refuse only once it starts; called when the config is validated."""

    def preflight(self, spec: TrainConfig) -> None:
        """Refuse (`ShadowFTError`) settings this machine cannot run (a package, a GPU, an opt-in),
        before any stage: called with the launch checks (`shadowft.train.preflight.check_launch`)."""

    def cache_key(self, spec: TrainConfig) -> dict[str, Any]:
        """What the train stage's key holds besides the objective's settings (which are in it already):
        the content of the files the settings name (e.g. a user's reward module)."""
        return {}

    # -- data (the data stage) ---------------------------------------------------------------------

    def prepare_data(self, data: DataConfig, tokenizer_dir: Path, out_dir: Path) -> PreparedData:
        """Read `data.sources`, render them with the chat template of `tokenizer_dir` (Instruct's)
        and write the prepared dataset to `out_dir`: `dataset/` (`datasets.Dataset.save_to_disk`
        with `columns`), `tokenizer/` (what the trainer tokenizes with) and `stats.json` with at least
        `longest` (tokens of the longest sample: the memory estimate) and `max_length`."""
        raise NotImplementedError

    def describe_data(self, stats: dict[str, Any]) -> str:
        """Markdown summary of the prepared data from its `stats.json` (the data stage's Prefect artifact)."""
        return data_markdown("Prepared data", "samples", stats, f"{stats.get('tokens')}")

    def data_key(self) -> dict[str, Any]:
        """The objective's part of the data stage's cache key (its prepared data differs by objective)."""
        return {"objective": self.name}

    # -- the trainer (the fit phase) -----------------------------------------------------------------

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

    def check_train_data(self, dataset: Any, data_dir: Path, spec: TrainConfig) -> None:
        """Refuse prepared data that these train settings cannot use (e.g. a column a chosen reward
        reads), before the model loads."""

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
        """Parameters of a separate reference model the trainer holds in memory (TRL's `ref_model`: a
        frozen copy for full DPO / KTO; none for SFT, or with LoRA where the adapter-disabled model is
        the reference)."""
        ref = getattr(trainer, "ref_model", None)
        return 0 if ref is None else sum(p.numel() for p in ref.parameters())

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


def data_markdown(title: str, unit: str, stats: dict[str, Any], tokens: str, source_unit: str | None = None) -> str:
    """The data summary every objective writes: counts of `unit`, what was dropped or cut, tokens, sources."""
    per = source_unit or unit
    return (
        f"## {title}\n"
        f"- {unit}: {stats.get(unit)} ({stats.get('dropped', 0)} dropped, {stats.get('truncated', 0)} truncated at "
        f"{stats.get('max_length')} tokens)\n"
        f"- tokens: {tokens}\n"
        + "".join(
            f"- source `{s['source']}`: {s.get(per)} {unit} ({s.get('format')})\n" for s in stats.get("sources", [])
        )
    )


def refuse_packing(data: DataConfig, objective: str, why: str) -> None:
    """The data hook of an objective without `supports_packing`: data.packing is refused before any work."""
    if getattr(data, "packing", False):
        raise ShadowFTError(
            f"data.packing applies to SFT only: {why}", hint=f"set data.packing=false with train.objective={objective}"
        )


def prepared_max_length(data_dir: Path | None) -> int | None:
    """The cutoff length the data stage recorded in `stats.json` (the trainer truncates there too)."""
    import json

    if data_dir is None or not (Path(data_dir) / "stats.json").is_file():
        return None
    return json.loads((Path(data_dir) / "stats.json").read_text()).get("max_length")
