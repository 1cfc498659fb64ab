"""Stage 2: dataset prep with the Instruct chat template (Base is trained with it)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from shadowft.config import DataConfig
from shadowft.stages import data_spec
from shadowft.store import Artifact
from shadowft.train.objectives import get_objective
from tasks._stage import build_stage, stage_options


@task(**stage_options(data_spec, "prepare_data"))
def prepare_data(data: DataConfig, instruct: Path, store_root: str, objective: str = "sft") -> Artifact:
    art, _ = build_stage(data_spec, data=data, instruct=instruct, objective=objective, store_root=store_root)
    stats = json.loads((art.path / "data" / "stats.json").read_text())
    md = get_objective(objective).describe_data(stats)  # the objective knows what its data counts
    create_markdown_artifact(md, key="dataset", description=f"Prepared training data ({objective})")
    return art
