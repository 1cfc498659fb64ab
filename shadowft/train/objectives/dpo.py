"""Direct preference optimisation with TRL's `DPOTrainer` (Shadow-DPO: DPO on Base, grafted onto Instruct).

The data stage renders prompt / chosen / rejected with Instruct's chat template into plain text
(`shadowft.preference`), which `DPOTrainer` tokenizes as its standard format. The reference model is
the model being trained at step 0: for LoRA, TRL disables the adapter to get it (no second copy in
memory); for full fine-tuning, TRL loads a frozen copy from the model directory.
"""

from __future__ import annotations

import json
from typing import Any

from shadowft.train.objectives.base import Objective, TrainerParts


class DPO(Objective):
    """TRL's DPO loss (`train.dpo_loss`, default sigmoid) with strength `train.dpo_beta`."""

    name = "dpo"
    columns = ("prompt", "chosen", "rejected")
    token_columns = ()  # text columns: TRL tokenizes them with the tokenizer saved by the data stage

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
        spec = parts.spec
        max_length = None
        if parts.data_dir is not None and (parts.data_dir / "stats.json").is_file():
            max_length = json.loads((parts.data_dir / "stats.json").read_text()).get("max_length")
        args = self.args_class()(
            **parts.args,
            beta=spec.dpo_beta,
            loss_type=[spec.dpo_loss],
            max_length=max_length,
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

    def reference_params(self, trainer: Any) -> int:
        """Parameters of a separate reference model held in memory (0 when the adapter is disabled instead)."""
        ref = getattr(trainer, "ref_model", None)
        return 0 if ref is None else sum(p.numel() for p in ref.parameters())
