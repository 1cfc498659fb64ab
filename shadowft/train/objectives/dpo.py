"""Direct preference optimisation with TRL's `DPOTrainer` (Shadow-DPO: DPO on Base, grafted onto Instruct).

The data stage renders prompt / chosen / rejected with Instruct's chat template into plain text
(`shadowft.preference`), which `DPOTrainer` tokenizes as its standard format. The reference model is
the model being trained at step 0: for LoRA, TRL disables the adapter to get it (no second copy in
memory); for full fine-tuning, TRL loads a frozen copy from the model directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from shadowft.registry import SettingsModel
from shadowft.train.objectives.base import Objective, TrainerParts, data_markdown, prepared_max_length

if TYPE_CHECKING:
    from shadowft.config import DataConfig
    from shadowft.preference import PreferenceStats

#: TRL's DPO loss types (DPOConfig.loss_type).
DPOLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]


class DPOSettings(SettingsModel):
    """train.dpo: the DPO loss and its strength."""

    beta: float = Field(
        default=0.1,
        gt=0,
        description="Strength of the pull towards the reference (starting) model (TRL's and LLaMA-Factory's "
        "default 0.1; higher stays closer to the starting model).",
    )
    loss: DPOLoss = Field(
        default="sigmoid", description="TRL's loss type; sigmoid is the original DPO loss (TRL's default)."
    )


class DPO(Objective):
    """TRL's DPO loss (`train.dpo.loss`, default sigmoid) with strength `train.dpo.beta`."""

    name = "dpo"
    summary = "direct preference optimisation with TRL on prompt/chosen/rejected pairs (Shadow-DPO)"
    Settings = DPOSettings
    #: where the paper is silent: LoRA 5e-6 as in LLaMA-Factory's LoRA DPO example
    #: (examples/train_lora/llama3_lora_dpo.yaml); full 5e-7 as in the alignment-handbook's full DPO
    #: recipe (zephyr-7b-beta), between TRL's DPOConfig default (1e-6) and smaller published values.
    default_lr = {"lora": 5e-6, "full": 5e-7}
    columns = ("prompt", "chosen", "rejected")
    token_columns = ()  # text columns: TRL tokenizes them with the tokenizer saved by the data stage
    sequences_per_sample = 2  # chosen and rejected side by side

    def prepare_data(self, data: DataConfig, tokenizer_dir: Path, out_dir: Path) -> PreferenceStats:
        from shadowft.preference import prepare_preferences

        return prepare_preferences(data, tokenizer_dir, out_dir)

    def describe_data(self, stats: dict[str, Any]) -> str:
        tokens = (
            f"prompts {stats['prompt_tokens']}, chosen {stats['chosen_tokens']}, rejected {stats['rejected_tokens']}"
        )
        return data_markdown("Preference data", "pairs", stats, tokens)

    def max_token_id(self, dataset: Any) -> int:
        return -1  # the texts were rendered by the Instruct tokenizer the trainer also uses

    def collator(self, tokenizer: Any, device: str) -> Any:
        return None  # DPOTrainer's own collator pads chosen and rejected

    def args_class(self) -> type:
        from trl import DPOConfig

        return DPOConfig

    def trainer_class(self) -> type:
        from trl import DPOTrainer

        return DPOTrainer

    def build_trainer(self, parts: TrainerParts) -> Any:
        settings = self.settings(parts.spec)
        args = self.args_class()(
            **parts.args,
            beta=settings.beta,
            loss_type=[settings.loss],
            max_length=prepared_max_length(parts.data_dir),
            precompute_ref_log_probs=False,
        )
        return self.trainer_class()(
            model=parts.model,
            ref_model=None,  # LoRA: the adapter-disabled model; full: TRL loads a frozen copy
            args=args,
            train_dataset=parts.dataset,
            processing_class=parts.tokenizer,
            callbacks=parts.callbacks,
        )
