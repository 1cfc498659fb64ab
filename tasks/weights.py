"""Stages 4-5: the delta of full fine-tuning, and the graft onto Instruct."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from shadowft.config import GraftConfig
from shadowft.stages import chosen_graft_spec, delta_spec, graft_spec
from shadowft.store import Artifact
from tasks._stage import artifact_key_name, build_stage, stage_options


@task(**stage_options(delta_spec, "extract_delta"))
def extract_delta(base: Path, tuned: Artifact, store_root: str) -> Artifact:
    art, _ = build_stage(delta_spec, base=base, tuned=tuned, store_root=store_root)
    return art


@task(**stage_options(graft_spec, "graft", task_run_name="graft-{label}"))
def graft(graft_cfg: GraftConfig, instruct: Path, update: Artifact, label: str, store_root: str) -> Artifact:
    """`label` names the result in the UI (shadow-ft, direct); the update artifact is what counts."""
    art, _ = build_stage(graft_spec, graft_cfg=graft_cfg, instruct=instruct, update=update, store_root=store_root)
    publish_graft(art, label)
    return art


@task(**stage_options(chosen_graft_spec, "graft", task_run_name="graft-{label}"))
def graft_chosen(
    graft_cfg: GraftConfig, selection: Artifact, chosen: Artifact, label: str, store_root: str
) -> Artifact:
    """graft.alpha auto: the chosen candidate, with the selection in its manifest."""
    art, _ = build_stage(
        chosen_graft_spec, graft_cfg=graft_cfg, selection=selection, chosen=chosen, store_root=store_root
    )
    publish_graft(art, label)
    return art


def publish_graft(art: Artifact, label: str) -> None:
    info = json.loads((art.path / "manifest.json").read_text())["graft"]
    # the method's own description of what is added (grafts made before it: linear)
    added = info.get("formula") or f"{info['alpha']} x update"
    md = (
        f"## Graft ({label})\n"
        f"- W = W_instruct + {added} ({info['method']}, method {info.get('graft_method', 'linear')}), "
        f"scope `{info['scope']}`\n"
        f"- {info['grafted']} tensors grafted, {info['copied']} copied from Instruct\n"
        f"- model dir: `{art.path / 'model'}`\n" + "".join(f"- warning: {w}\n" for w in info["warnings"])
    )
    create_markdown_artifact(md, key=artifact_key_name("graft", label), description=f"Graft summary ({label})")
