"""The fit phase: load the model and data, build the objective's trainer, train (or resume).

Runs wherever the launcher puts it (this process, or every rank of a launched job). It reads only
the `TrainJob`, so a launched process can rebuild everything from the job file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shadowft.data import load_prepared
from shadowft.errors import CheckpointError, ShadowFTError
from shadowft.train.checkpoints import is_finished
from shadowft.train.job import FitOutcome, TrainJob
from shadowft.train.methods import get_method
from shadowft.train.objectives import TrainerParts, get_objective
from shadowft.train.progress import ProgressFn, progress_callback


def training_args(job: TrainJob) -> dict[str, Any]:
    """`TrainingArguments` keywords every objective shares (schedule, checkpoints, precision)."""
    spec = job.spec
    return dict(
        output_dir=str(job.checkpoint_dir),
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.effective_lr,
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps if spec.max_steps is not None else -1,
        lr_scheduler_type=spec.scheduler,
        warmup_steps=spec.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        optim="adamw_torch",
        logging_strategy="steps",
        logging_steps=spec.logging_steps,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit,
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=job.precision == "bf16",
        fp16=job.precision == "fp16",
        use_cpu=job.device == "cpu",
        activation_checkpointing=spec.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if spec.gradient_checkpointing else None,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        eval_strategy="no",
    )


def fit(job: TrainJob, progress: ProgressFn | None = None) -> FitOutcome:
    """Train per `job`; resume from `job.resume` when set. `progress` gets every step and log."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerState

    spec = job.spec
    objective, method = get_objective(spec.objective), get_method(spec.method)
    dataset = load_prepared(job.data_dir)
    tok_dir = job.data_dir / "tokenizer" if (job.data_dir / "tokenizer").is_dir() else job.model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))

    transformers.set_seed(spec.seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(job.model_dir), dtype=method.load_dtype(job.precision), trust_remote_code=job.trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load a causal LM from {job.model_dir}: {exc}") from None
    vocab = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    max_id = objective.max_token_id(dataset)
    if max_id >= vocab:
        raise ShadowFTError(
            f"token id {max_id} in the prepared data is outside the model's vocabulary ({vocab})",
            hint="prepare the data with the tokenizer of this model family (the Instruct model dir)",
        )
    if spec.gradient_checkpointing:
        model.config.use_cache = False
    model = method.prepare(model, spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    parts = TrainerParts(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        args=training_args(job),
        callbacks=[progress_callback(progress, job.work_dir)],
        device=job.device,
        spec=spec,
        data_dir=job.data_dir,
    )
    trainer = objective.build_trainer(parts)
    trainer.remove_callback(PrinterCallback)  # progress goes to `progress`, not stdout
    resume = str(job.resume) if job.resume else None
    deterministic = torch.are_deterministic_algorithms_enabled()
    if job.device == "cpu":  # bitwise-reproducible CPU runs (restored afterwards)
        torch.use_deterministic_algorithms(True, warn_only=True)
    training_loss: float | None
    try:
        if resume and is_finished(Path(resume)):
            # The run crashed after its last checkpoint and before the output was published. The Trainer
            # would still run one extra step when resuming mid-epoch at max_steps, so load it instead.
            trainer._load_from_checkpoint(resume)  # private API: safetensors + weights_only loads
            trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
            training_loss = None
        else:
            training_loss = trainer.train(resume_from_checkpoint=resume).training_loss
    except torch.OutOfMemoryError:
        raise ShadowFTError(
            "out of memory while training",
            hint="lower train.batch_size (raise grad_accum to keep the global batch), enable "
            "train.gradient_checkpointing, lower data.max_length, or use train.method=lora",
        ) from None
    finally:
        torch.use_deterministic_algorithms(deterministic)

    state = trainer.state
    return FitOutcome(
        global_step=state.global_step,
        max_steps=state.max_steps,
        epoch=float(state.epoch or 0.0),
        training_loss=training_loss,
        log_history=list(state.log_history),
        samples=len(dataset),
        trainable_params=trainable,
        total_params=total,
        reference_params=objective.reference_params(trainer),
        save=lambda out: method.save(trainer.model, tokenizer, spec, job.model_dir, out),
    )
