"""Fine-tuning as three phases: setup (here) -> fit (by a launcher) -> publish (here).

Shadow-FT applies this to the Base model; the `direct` baseline applies the same function to the
Instruct model. Built on transformers' `Trainer` (and PEFT for LoRA):

- checkpoints go to ``work_dir/checkpoints`` every `save_steps`; a later call with the same `work_dir`
  resumes from the last complete checkpoint (model, optimizer, scheduler, RNG and data position), so
  finished steps are not repeated;
- the loss curve is kept in ``loss_curve.json`` (live copy in `work_dir`, final copy in the output);
- the output is written to a temporary directory and renamed to `out_dir` when complete:
  LoRA -> a PEFT adapter dir (adapter_config.json + adapter_model.safetensors);
  full -> a HF model dir (config, safetensors, tokenizer with the chat template trained with).

The seams: `train.objective` picks the loss (`shadowft.train.objectives`), `train.method` what is
trained (`shadowft.train.methods`), and the launcher how processes start (`shadowft.train.launchers`).
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadowft.config import TrainConfig
from shadowft.data import load_prepared
from shadowft.errors import CheckpointError, ShadowFTError
from shadowft.files import atomic_output_dir, refuse_nonempty, write_json_atomic
from shadowft.train.checkpoints import checkpoint_step, claim_work_dir
from shadowft.train.job import FitOutcome, TrainJob
from shadowft.train.launchers import get_launcher
from shadowft.train.objectives import get_objective
from shadowft.train.preflight import preflight
from shadowft.train.progress import ProgressFn, loss_curve
from shadowft.train.resources import resolve_launch


@dataclass
class TrainResult:
    """What `train_model` produced."""

    out_dir: str
    method: str
    objective: str
    global_step: int
    max_steps: int
    epochs_done: float
    train_loss: float | None
    final_loss: float | None
    resumed_from: str | None
    resumed_step: int
    seconds: float
    samples: int
    trainable_params: int
    total_params: int
    device: str
    precision: str
    lr: float
    reference_params: int = 0
    # how it ran (launched jobs: shadowft.train.launchers); global_batch = batch x grad_accum x world_size
    launcher: str = "inprocess"
    distributed: str = "none"
    world_size: int = 1
    num_nodes: int = 1
    devices: str = "1 x cpu"
    global_batch: int = 0
    threads: int = 1
    attn_implementation: str = "sdpa"
    packing: bool = False
    report_to: str = "none"
    loss_curve: list[dict[str, float]] = field(default_factory=list, repr=False)

    def to_dict(self, with_curve: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_curve:
            d.pop("loss_curve")
        return d


def resolve_precision(precision: str) -> tuple[str, str]:
    """(device, precision) for 'auto' | 'fp32' | 'bf16' | 'fp16' on this machine."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        if device == "cuda":
            return device, "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return device, "fp32"
    if precision == "fp16" and device == "cpu":
        raise ShadowFTError("train.precision=fp16 needs a GPU", hint="use fp32 or bf16 on a CPU")
    return device, precision


def setup(
    model_dir: Path,
    data_dir: Path,
    spec: TrainConfig,
    out_dir: Path,
    work_dir: Path,
    *,
    trust_remote_code: bool = False,
) -> TrainJob:
    """Validate the inputs (before any model loads) and claim the work dir. -> the job to launch"""
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir} is not a HF model directory (no config.json)")
    refuse_nonempty(out_dir)
    objective, dataset = get_objective(spec.objective), load_prepared(data_dir)
    objective.check_dataset(dataset, data_dir)
    objective.check_train_data(dataset, data_dir, spec)  # e.g. a column a chosen reward reads
    device, precision = resolve_precision(spec.precision)
    preflight(model_dir, data_dir, spec, trust_remote_code=trust_remote_code)  # fits? engine config sane?
    # The work dir belongs to one training job: refuse to resume checkpoints made with other settings.
    job = {
        "model_dir": str(model_dir.resolve()),
        "data_dir": str(data_dir.resolve()),
        "spec": spec.model_dump(mode="json"),
    }
    resume = claim_work_dir(work_dir, job)
    return TrainJob(model_dir, data_dir, work_dir, spec, device, precision, resume, trust_remote_code)


def publish(job: TrainJob, outcome: FitOutcome, out_dir: Path, seconds: float) -> TrainResult:
    """Write the trained weights, the loss curve and the result to `out_dir` (atomically)."""
    result = summarize(job, outcome, out_dir, seconds)
    with atomic_output_dir(out_dir) as tmp:  # published by rename only when complete
        outcome.save(tmp)
        write_json_atomic(tmp / "loss_curve.json", result.loss_curve)
        # without `out_dir`: the folder is renamed after this (by us and by the artifact store)
        on_disk = {k: v for k, v in result.to_dict().items() if k != "out_dir"}
        write_json_atomic(tmp / "train_result.json", {**on_disk, "spec": job.spec.model_dump(mode="json")})
    return result


def summarize(job: TrainJob, outcome: FitOutcome, out_dir: Path, seconds: float) -> TrainResult:
    """The `TrainResult` of a finished fit (what `publish` records)."""
    from shadowft.train.resources import resolve_launch

    spec = job.spec
    plan = resolve_launch(spec)
    curve = loss_curve(outcome.log_history)
    result = TrainResult(
        out_dir=str(out_dir),
        method=spec.method,
        objective=spec.objective,
        global_step=outcome.global_step,
        max_steps=outcome.max_steps,
        epochs_done=outcome.epoch,
        # mean of the logged losses over the whole run (the Trainer's own figure covers only the steps
        # run in this process, so it is wrong after a resume)
        train_loss=sum(c["loss"] for c in curve) / len(curve) if curve else _none_if_nan(outcome.training_loss),
        final_loss=curve[-1]["loss"] if curve else None,
        resumed_from=job.resume.name if job.resume else None,
        resumed_step=checkpoint_step(job.resume) if job.resume else 0,
        seconds=round(seconds, 3),
        samples=outcome.samples,
        trainable_params=outcome.trainable_params,
        total_params=outcome.total_params,
        device=job.device,
        precision=job.precision,
        lr=spec.effective_lr,
        reference_params=outcome.reference_params,
        launcher=plan.launcher,
        distributed=plan.distributed,
        world_size=outcome.world_size,
        num_nodes=plan.num_nodes,
        devices=f"{plan.num_nodes} x {plan.num_processes} x {job.device}"
        if plan.num_nodes > 1
        else f"{plan.num_processes} x {job.device}",
        global_batch=spec.batch_size * spec.grad_accum * outcome.world_size,
        threads=outcome.threads,
        attn_implementation=outcome.attn_implementation,
        packing=outcome.packing,
        report_to=spec.report_to,
        loss_curve=curve,
    )
    return result


def train_model(
    model_dir: Path,
    data_dir: Path,
    spec: TrainConfig,
    out_dir: Path,
    work_dir: Path,
    progress: ProgressFn | None = None,
    *,
    trust_remote_code: bool = False,
    keep_checkpoints: bool = False,
    launcher: str | None = None,
) -> TrainResult:
    """Fine-tune the model in `model_dir` on the prepared dataset in `data_dir` per `spec`.

    Checkpoints live in ``work_dir/checkpoints``; if a complete one exists (a crashed or interrupted
    earlier call with the same spec), training resumes from the last one. `progress` receives a dict
    (event, step, max_steps, loss, epoch) after every optimizer step and every log; an exception raised
    by it stops training, leaving the checkpoints for a resume. On success the output is published at
    `out_dir` and the checkpoints are deleted unless `keep_checkpoints`.

    `launcher` (default: from the config, `shadowft.train.resources.resolve_launch`) starts the fit:
    in this process, or one process per rank through torchrun / accelerate launch. On a worker node
    of a multi-node job (train.node_rank > 0) nothing is published: node 0's rank 0 publishes.
    """
    model_dir, data_dir, out_dir, work_dir = (Path(p) for p in (model_dir, data_dir, out_dir, work_dir))
    t0 = time.time()
    job = setup(model_dir, data_dir, spec, out_dir, work_dir, trust_remote_code=trust_remote_code)
    plan = resolve_launch(spec if launcher is None else spec.model_copy(update={"launcher": launcher}))
    outcome = get_launcher(plan.launcher).launch(job, plan, progress)
    if plan.node_rank > 0:  # a worker node of a multi-node job: node 0 publishes the output
        return summarize(job, outcome, out_dir, time.time() - t0)
    result = publish(job, outcome, out_dir, time.time() - t0)
    for handed_over in (work_dir / "launch").glob("node-*/final"):  # a launched job's weights, now published
        shutil.rmtree(handed_over, ignore_errors=True)
    if not keep_checkpoints:
        shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
    return result


def _none_if_nan(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)
