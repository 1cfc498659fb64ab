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
    stats = json.loads((art.path / "data" / "stats.json").read_text())
    if stats.get("kind") == "preference":
        md = (
            "## Preference data\n"
            f"- pairs: {stats['pairs']} ({stats['dropped']} dropped, {stats['truncated']} truncated at {stats['max_length']} tokens)\n"
            f"- tokens: prompts {stats['prompt_tokens']}, chosen {stats['chosen_tokens']}, rejected {stats['rejected_tokens']}\n"
            + "".join(f"- source `{s['source']}`: {s['pairs']} pairs ({s['format']})\n" for s in stats["sources"])
        )
        create_markdown_artifact(md, key="dataset", description="Prepared preference data")
        return art
    md = (
        "## Dataset\n"
        f"- samples: {stats['samples']} ({stats['dropped']} dropped, {stats['truncated']} truncated at {stats['max_length']} tokens)\n"
        f"- tokens: {stats['tokens']} ({stats['assistant_tokens']} assistant tokens carry the loss)\n"
        + "".join(f"- source `{s['source']}`: {s['samples']} samples ({s['format']})\n" for s in stats["sources"])
    )
    create_markdown_artifact(md, key="dataset", description="Prepared training data")
    return art
