"""Helpers shared by the tests: an independent safetensors reader and input mutators."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    """Independent reader: safetensors' own loader over every shard."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def resize_vocab(src: Path, dst: Path, rows: int) -> Path:
    copy_dir(src, dst)
    state = load_file(dst / "model.safetensors")
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        state[n] = torch.cat([state[n], torch.randn(rows, state[n].shape[1])])
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["vocab_size"] += rows
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst
