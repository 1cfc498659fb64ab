"""The fit phase: load the model and data, build the objective's trainer, train (or resume).

Runs wherever the launcher puts it (this process, or every rank of a launched job). It reads only
the `TrainJob`, so a launched process can rebuild everything from the job file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shadowft.data import load_prepared
from shadowft.errors import CheckpointError, ShadowFTError
from shadowft.modality import is_multimodal
from shadowft.threads import resolve_threads, thread_limit
from shadowft.train.checkpoints import is_finished
from shadowft.train.job import FitOutcome, TrainJob
from shadowft.train.methods import get_method
from shadowft.train.objectives import TrainerParts, get_objective
from shadowft.train.progress import ProgressFn, progress_callback
from shadowft.train.resources import resolve_attn_implementation

#: strategies whose weights live sharded across ranks: saving is a collective (every rank takes part)
SHARDED = ("fsdp", "deepspeed")


def checkpointing_args(enabled: bool) -> dict[str, Any]:
    """Activation checkpointing under the name this transformers knows: 5.23 calls it
    `activation_checkpointing`; 5.17 (the GPU images' version) has only `gradient_checkpointing`."""
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


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
        **checkpointing_args(spec.gradient_checkpointing),
        report_to=[spec.report_to] if spec.report_to in ("wandb", "mlflow") else [],  # tensorboard: fit's own
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        eval_strategy="no",
        # a text-only batch leaves an unfrozen vision tower / projector without gradients: DDP must expect it
        ddp_find_unused_parameters=True if trains_vision(job) else None,
    )


def trains_vision(job: TrainJob) -> bool:
    """Whether a vision-language model's tower or projector is trained (train.freeze_* false)."""
    return is_multimodal(job.model_dir) and not (job.spec.freeze_vision_tower and job.spec.freeze_projector)


def fit(job: TrainJob, progress: ProgressFn | None = None) -> FitOutcome:
    """Train per `job`; resume from `job.resume` when set. `progress` gets every step and log."""
    import torch
    import transformers
    from transformers import PrinterCallback

    spec = job.spec
    objective, method = get_objective(spec.objective), get_method(spec.method)
    dataset = load_prepared(job.data_dir)
    packing = data_packing(job.data_dir)
    if packing and not objective.supports_packing:
        raise ShadowFTError(
            f"data.packing is not supported by the {spec.objective!r} objective",
            hint="set data.packing=false",
        )
    attn = resolve_attn_implementation(spec.attn_implementation, job.device)
    tok_dir = job.data_dir / "tokenizer" if (job.data_dir / "tokenizer").is_dir() else job.model_dir
    tokenizer = load_processing(tok_dir, job.model_dir)

    transformers.set_seed(spec.seed)
    model = load_model(job.model_dir, method.load_dtype(job.precision), job.trust_remote_code, attn)
    vocab = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    max_id = objective.max_token_id(dataset)
    if max_id >= vocab:
        raise ShadowFTError(
            f"token id {max_id} in the prepared data is outside the model's vocabulary ({vocab})",
            hint="prepare the data with the tokenizer of this model family (the Instruct model dir)",
        )
    if packing:
        check_packing(model, attn)
    if spec.gradient_checkpointing or packing:
        # packing: with a cache the model skips the position-id masks that keep conversations apart
        model.config.use_cache = False
    model = method.prepare(model, spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    callbacks = [progress_callback(progress, job.work_dir)]
    if spec.report_to == "tensorboard":
        from transformers.integrations import TensorBoardCallback

        board = TensorBoardCallback()
        board.logging_dir = str(job.work_dir / "tensorboard")  # outlives the checkpoints
        callbacks.append(board)
    parts = TrainerParts(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        args=training_args(job),
        callbacks=callbacks,
        device=job.device,
        spec=spec,
        data_dir=job.data_dir,
        packing=packing,
    )
    trainer = objective.build_trainer(parts)
    trainer.remove_callback(PrinterCallback)  # progress goes to `progress`, not stdout
    if is_multimodal(job.model_dir) and spec.distributed not in SHARDED:
        load_renamed_checkpoints(trainer, job.model_dir)
    world_size = int(trainer.args.world_size)
    threads = resolve_threads(spec.threads, total, local_processes=max(1, world_size // spec.num_nodes))
    resume = str(job.resume) if job.resume else None
    deterministic = torch.are_deterministic_algorithms_enabled()
    if job.device == "cpu":  # bitwise-reproducible CPU runs (restored afterwards)
        torch.use_deterministic_algorithms(True, warn_only=True)
    training_loss: float | None
    try:
        with thread_limit(threads):
            training_loss = _train(trainer, resume)
    except torch.OutOfMemoryError:
        raise ShadowFTError(
            "out of memory while training",
            hint="lower train.batch_size (raise grad_accum to keep the global batch), enable "
            "train.gradient_checkpointing, lower data.max_length, or use train.method=lora "
            "(`shadowft plan CONFIG` estimates what fits)",
        ) from None
    finally:
        torch.use_deterministic_algorithms(deterministic)

    state = trainer.state
    sharded = spec.distributed in SHARDED
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
        save=(
            (lambda out: _save_sharded(trainer, tokenizer, out))
            if sharded
            else (lambda out: method.save(trainer.model, tokenizer, spec, job.model_dir, out))
        ),
        collective_save=sharded,
        world_size=world_size,
        threads=threads,
        attn_implementation=attn,
        packing=packing,
    )


#: the files of a saved processor (beside its tokenizer's)
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def load_model(model_dir: Path, dtype: Any, trust_remote_code: bool = False, attn: str | None = None) -> Any:
    """The model to train: a causal LM, or for a vision-language model dir (`shadowft.modality`) the
    whole `...ForConditionalGeneration` (vision tower, projector, language model)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    multimodal = is_multimodal(model_dir)
    auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    try:
        return auto.from_pretrained(
            str(model_dir), dtype=dtype, trust_remote_code=trust_remote_code, attn_implementation=attn
        )
    except Exception as exc:  # noqa: BLE001
        what = "vision-language model" if multimodal else "causal LM"
        raise CheckpointError(f"cannot load a {what} from {model_dir}: {exc}") from None


def load_processing(tok_dir: Path, model_dir: Path) -> Any:
    """The tokenizer the data was prepared with; for a vision-language model whose data stage kept its
    processor (data with images: SFT, DPO), the processor (tokenizer and image processor: the collator
    computes pixel values, and it is saved with a full model)."""
    if is_multimodal(model_dir) and any((tok_dir / f).is_file() for f in PROCESSOR_FILES):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(str(tok_dir))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


def load_renamed_checkpoints(trainer: Any, model_dir: Path) -> None:
    """Resume a model whose checkpoint files spell its tensors differently from its modules.

    transformers 5 saves a checkpoint under the architecture's original tensor names (Llava's
    `language_model.model.layers...`, Gemma-3's `vision_tower.vision_model...`), but its Trainer loads
    a checkpoint back with `load_state_dict` by module name: every tensor is "unexpected", nothing
    is loaded, and the resumed run silently goes on from the weights it started with. This loads the
    checkpoint's tensors under their module names (transformers' own renaming rules, through
    `shadowft.modality`); adapters and checkpoints without full weights load as before."""
    from safetensors.torch import load_file

    from shadowft.modality import checkpoint_parts

    original = trainer._load_from_checkpoint  # private API, as `_train` uses it
    parts = checkpoint_parts(model_dir)

    def load(resume_from_checkpoint: str, model: Any = None) -> None:
        ckpt = Path(resume_from_checkpoint)
        index = ckpt / "model.safetensors.index.json"
        if index.is_file():
            import json

            files = sorted({ckpt / f for f in json.loads(index.read_text())["weight_map"].values()})
        elif (ckpt / "model.safetensors").is_file():
            files = [ckpt / "model.safetensors"]
        else:
            return original(resume_from_checkpoint, model)
        target = model if model is not None else trainer.model
        state: dict[str, Any] = {}
        for f in files:
            state.update({parts.module_name(k): v for k, v in load_file(str(f), device="cpu").items()})
        result = target.load_state_dict(state, strict=False)
        loaded = {id(p) for n, p in target.named_parameters(remove_duplicate=False) if n in state}
        missing = [
            n for n, p in target.named_parameters(remove_duplicate=False) if n not in state and id(p) not in loaded
        ]
        if result.unexpected_keys or missing:
            raise CheckpointError(
                f"checkpoint {ckpt.name} does not match the model: "
                f"{len(result.unexpected_keys)} unknown tensor(s) (e.g. {result.unexpected_keys[:2]}), "
                f"{len(missing)} missing (e.g. {missing[:2]})"
            )
        return None

    trainer._load_from_checkpoint = load


#: attention implementations that keep packed conversations apart using position ids
PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


def check_packing(model: Any, attn: str) -> None:
    """data.packing needs a model whose attention builds its masks from position ids (transformers'
    attention-interface models: Llama, Qwen, Mistral, Gemma, ...); older ones (Bloom, CodeGen, custom
    code) would let packed conversations attend to each other."""
    name = type(model).__name__
    if attn not in PACKING_ATTENTION or not getattr(model, "_supports_attention_backend", False):
        raise ShadowFTError(
            f"data.packing: {name} with attention {attn} cannot keep packed conversations apart "
            f"(it does not mask by position ids)",
            hint="set data.packing=false for this model (or use a model on transformers' attention interface)",
        )


def data_packing(data_dir: Path) -> bool:
    """Whether the prepared data asked for packed batches (`data.packing`, recorded by the data stage)."""
    import json

    return bool(json.loads((Path(data_dir) / "stats.json").read_text()).get("packing", False))


def _train(trainer: Any, resume: str | None) -> float | None:
    """Train, or resume from `resume`. -> the Trainer's mean loss (None when nothing was left to train)"""
    from transformers import TrainerState

    if resume and is_finished(Path(resume)):
        # The run crashed after its last checkpoint and before the output was published. The Trainer
        # would still run one extra step when resuming mid-epoch at max_steps, so load it instead.
        trainer._load_from_checkpoint(resume)  # private API: safetensors + weights_only loads
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        return None
    return float(trainer.train(resume_from_checkpoint=resume).training_loss)


def _save_sharded(trainer: Any, tokenizer: Any, out: Path) -> None:
    """FSDP / ZeRO-3: every rank calls this (the Trainer gathers the shards; the main process writes)."""
    trainer.save_model(str(out))
    if trainer.args.process_index == 0:
        tokenizer.save_pretrained(str(out))
