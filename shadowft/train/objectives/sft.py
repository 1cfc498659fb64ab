"""Supervised fine-tuning: next-token cross-entropy on the assistant tokens (prompt tokens are -100)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadowft.train.objectives.base import Objective, data_markdown

if TYPE_CHECKING:
    from shadowft.config import DataConfig
    from shadowft.data import DataStats


class PadCollator:
    """Right-pads input_ids with `pad_id`, labels with -100, and builds the attention mask."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from shadowft.data import IGNORE_INDEX

        n = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            n = int(math.ceil(n / self.multiple) * self.multiple)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def pad_id(tokenizer: Any) -> int:
    """The pad token id, else EOS, else 0 (padding is masked out of the loss either way)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


class SFT(Objective):
    """The transformers `Trainer`'s own causal-LM loss over `labels` (the data stage masks prompts)."""

    name = "sft"
    summary = "next-token cross-entropy on the assistant replies (the paper's Shadow-FT)"
    selects_alpha = True  # its loss on the validation split chooses graft.alpha auto
    columns = ("input_ids", "labels")
    supports_packing = True

    def prepare_data(self, data: DataConfig, tokenizer_dir: Path, out_dir: Path) -> DataStats:
        from shadowft.data import prepare_dataset

        return prepare_dataset(data, tokenizer_dir, out_dir)

    def describe_data(self, stats: dict[str, Any]) -> str:
        tokens = f"{stats['tokens']} ({stats['assistant_tokens']} assistant tokens carry the loss)"
        if stats.get("images"):
            tokens += f"; {stats['images']} images"
        return data_markdown("Dataset", "samples", stats, tokens)

    def data_key(self) -> dict[str, Any]:
        return {}  # the data stage's key from before objectives existed: SFT caches stay valid

    def collator(self, tokenizer: Any, device: str) -> Any:
        multiple = 8 if device == "cuda" else None
        if getattr(tokenizer, "image_processor", None) is not None:  # a vision-language pair's processor
            from shadowft.vlm_data import VisionCollator

            return VisionCollator(tokenizer, multiple)
        return PadCollator(pad_id(tokenizer), multiple)

    def packed_collator(self, tokenizer: Any) -> Any:
        return packed_collator()


def packed_collator() -> Any:
    """data.packing: the batch's conversations end to end in one row, no padding. Position ids restart
    at each conversation, which the attention (sdpa / flash) uses to keep them apart; the first label
    of each conversation is -100 so no token is trained to predict the next conversation's start.
    Each conversation's tokens then get exactly the loss they get in a padded batch."""
    from transformers import DataCollatorWithFlattening

    from shadowft.data import IGNORE_INDEX

    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
