"""Stage 3: fine-tuning (Base for Shadow-FT; Instruct for the `direct` baseline), resumable."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from shadowft.config import ResourcesConfig, TrainConfig
from shadowft.stages import train_spec
from shadowft.store import Artifact
from shadowft.train.progress import fan_out, terminal_progress
from tasks._stage import HEAVY_TAG, artifact_key_name, build_stage_in_slot, stage_options


def _progress_reporter(role: str):
    """A callback for `train_model` that keeps a Prefect progress artifact up to date (at most 1/s)."""
    art_id = create_progress_artifact(
        0.0, key=artifact_key_name("train-progress", role), description=f"Training {role}"
    )
    last = [0.0]

    def report(event: dict) -> None:
        now = time.monotonic()
        step, total = event.get("step") or 0, event.get("max_steps") or 0
        if total and (now - last[0] >= 1.0 or step >= total):
            update_progress_artifact(art_id, progress=100.0 * step / total)  # type: ignore[arg-type]  # sync call
            last[0] = now

    return report


@task(**stage_options(train_spec, "train", task_run_name="train-{role}", tags=[HEAVY_TAG]))
def train(
    train: TrainConfig,
    model: Path,
    data: Artifact,
    role: str,
    store_root: str,
    resources: ResourcesConfig | None = None,
) -> Artifact:
    """`role` names what is trained (base / instruct) for the UI; the model dir is what counts.
    The stage waits for a free slot of `resources` (not part of the cache key: where it runs, not what)."""
    art, _ = build_stage_in_slot(
        train_spec,
        resources or ResourcesConfig(),
        f"train-{role}",
        train=train,
        model=model,
        data=data,
        store_root=store_root,
        progress=fan_out(_progress_reporter(role), terminal_progress(role)),  # the UI's artifact and a bar
    )
    info = json.loads((art.path / "manifest.json").read_text())["train"]
    curve = json.loads((art.path / "loss_curve.json").read_text())
    md = (
        f"## Training ({role}, {info['method']})\n"
        f"- steps: {info['global_step']} (resumed from step {info['resumed_step']})\n"
        f"- final loss: {info['final_loss']}, mean train loss: {info['train_loss']}\n"
        f"- lr {info['lr']}, {info['trainable_params']:,} of {info['total_params']:,} parameters trained, "
        f"{info['seconds']:.0f}s on {info['device']} ({info['precision']})\n"
        f"- launched: {info.get('launcher', 'inprocess')}, {info.get('distributed', 'none')}, world size "
        f"{info.get('world_size', 1)} ({info.get('devices', '')}); global batch {info.get('global_batch')} = "
        f"batch x grad_accum x world size\n"
        f"- loss curve: {len(curve)} points in `{art.path / 'loss_curve.json'}`\n"
    )
    create_markdown_artifact(md, key=artifact_key_name("training", role), description=f"Training summary ({role})")
    return art
