"""graft.alpha auto: each candidate's validation loss, and the choice (cached like every stage)."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from shadowft.config import GraftConfig
from shadowft.stages import alpha_spec, val_loss_spec
from shadowft.store import Artifact
from tasks._stage import artifact_key_name, build_stage, inline_chart, stage_options


@task(**stage_options(val_loss_spec, "validation_loss", task_run_name="validation-loss-{label}"))
def validation_loss(model: Artifact, data: Artifact, label: str, store_root: str) -> Artifact:
    art, _ = build_stage(val_loss_spec, model=model, data=data, store_root=store_root)
    return art


@task(**stage_options(alpha_spec, "select_alpha"))
def select_alpha(
    graft_cfg: GraftConfig,
    grafts: dict[str, Artifact],
    losses: dict[str, Artifact],
    retention_evals: dict[str, Artifact],
    instruct_eval: Artifact | None,
    store_root: str,
    label: str = "",
) -> Artifact:
    """`label` (not part of the cache key) tells apart the selections of one comparison."""
    art, _ = build_stage(
        alpha_spec,
        graft_cfg=graft_cfg,
        grafts=grafts,
        losses=losses,
        retention_evals=retention_evals,
        instruct_eval=instruct_eval,
        store_root=store_root,
    )
    md = (art.path / "selection.md").read_text() + "\n" + inline_chart(art.path / "alpha.png")
    create_markdown_artifact(
        md,
        key=artifact_key_name("alpha-selection", label),
        description=f"graft.alpha auto: candidates and choice{f' ({label})' if label else ''}",
    )
    return art
