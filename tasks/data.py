"""Stage 2: dataset prep with the Instruct chat template (Base is trained with it)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from shadowft.config import DataConfig
from shadowft.stages import data_spec
from shadowft.store import Artifact
from tasks._stage import build_stage, stage_options


@task(**stage_options(data_spec, "prepare_data"))
def prepare_data(data: DataConfig, instruct: Path, store_root: str, objective: str = "sft") -> Artifact:
    art, _ = build_stage(data_spec, data=data, instruct=instruct, objective=objective, store_root=store_root)
    md, description = _summary(json.loads((art.path / "data" / "stats.json").read_text()))
    create_markdown_artifact(md, key="dataset", description=description)
    return art


def _summary(stats: dict) -> tuple[str, str]:
    """The prepared data's markdown summary (SFT samples or preference pairs) and its description."""
    pref = stats.get("kind") == "preference"
    unit = "pairs" if pref else "samples"
    tokens = (
        f"prompts {stats['prompt_tokens']}, chosen {stats['chosen_tokens']}, rejected {stats['rejected_tokens']}"
        if pref
        else f"{stats['tokens']} ({stats['assistant_tokens']} assistant tokens carry the loss)"
    )
    md = (
        f"## {'Preference data' if pref else 'Dataset'}\n"
        f"- {unit}: {stats[unit]} ({stats['dropped']} dropped, {stats['truncated']} truncated at {stats['max_length']} tokens)\n"
        f"- tokens: {tokens}\n"
        + "".join(f"- source `{s['source']}`: {s[unit]} {unit} ({s['format']})\n" for s in stats["sources"])
    )
    return md, "Prepared preference data" if pref else "Prepared training data"
