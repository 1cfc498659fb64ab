"""Stage 1: the pair check (fails fast on a wrong pair, before any training)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from shadowft.config import PairConfig
from shadowft.stages import pair_spec
from shadowft.store import Artifact
from tasks._stage import build_stage, stage_options


@task(**stage_options(pair_spec, "check_pair"))
def check_pair(pair: PairConfig, base: Path, instruct: Path, scope: str, store_root: str) -> Artifact:
    art, _ = build_stage(pair_spec, pair=pair, base=base, instruct=instruct, scope=scope, store_root=store_root)
    report = json.loads((art.path / "pair.json").read_text())
    s = report.get("sigma") or {}
    lines = [
        "## Pair check",
        f"- base: `{base}`",
        f"- instruct: `{instruct}`",
        f"- sigma over layer tensors: mean {s.get('mean', float('nan')):.4f}, median {s.get('median', float('nan')):.4f}, "
        f"max {s.get('max', float('nan')):.4f} (threshold {pair.max_sigma})",
        *[f"- warning: {w}" for w in report["warnings"]],
    ]
    create_markdown_artifact("\n".join(lines), key="pair-check", description="Base / Instruct compatibility")
    return art
