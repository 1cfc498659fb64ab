"""Fine-tuning: LoRA or full fine-tuning of a causal LM on a dataset prepared by `shadowft.data`.

Shadow-FT applies this to the Base model; the `direct` baseline applies the same function to the
Instruct model. Built on transformers' `Trainer` (and PEFT for LoRA):

- checkpoints go to ``work_dir/checkpoints`` every `save_steps`; a later call with the same `work_dir`
  resumes from the last complete checkpoint (model, optimizer, scheduler, RNG and data position), so
  finished steps are not repeated;
- the loss curve is kept in ``loss_curve.json`` (live copy in `work_dir`, final copy in the output);
- the output is written to a temporary directory and renamed to `out_dir` when complete:
  LoRA -> a PEFT adapter dir (adapter_config.json + adapter_model.safetensors);
  full -> a HF model dir (config, safetensors, tokenizer with the chat template trained with).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadowft.checkpoint import atomic_output_dir
from shadowft.config import TrainConfig
from shadowft.data import IGNORE_INDEX, load_prepared
from shadowft.errors import CheckpointError, OutputExistsError, ShadowFTError

ProgressFn = Callable[[dict[str, Any]], None]
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainResult:
    """What `train_model` produced."""

    out_dir: str
    method: str
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
    loss_curve: list[dict[str, float]] = field(default_factory=list, repr=False)

    def to_dict(self, with_curve: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_curve:
            d.pop("loss_curve")
        return d


# -- helpers -------------------------------------------------------------------------------------


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


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint dirs in `ckpt_dir` that were written completely (trainer_state.json is written last),
    sorted by step."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit():
            state = p / "trainer_state.json"
            try:
                json.loads(state.read_text())
            except (OSError, ValueError):
                continue
            found.append(p)
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _remove_incomplete(ckpt_dir: Path, keep: list[Path]) -> list[str]:
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p not in keep:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


class PadCollator:
    """Right-pads input_ids with `pad_id`, labels with -100, and builds the attention mask."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        n = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            n = int(math.ceil(n / self.multiple) * self.multiple)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :k] = torch.as_tensor(f["labels"], dtype=torch.long)
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _curve(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    out = []
    for e in log_history:
        if "loss" in e and "step" in e:
            out.append(
                {
                    "step": int(e["step"]),
                    "loss": float(e["loss"]),
                    "lr": float(e.get("learning_rate", float("nan"))),
                    "epoch": float(e.get("epoch", 0.0)),
                    **({"grad_norm": float(e["grad_norm"])} if e.get("grad_norm") is not None else {}),
                }
            )
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _make_callback(progress: ProgressFn | None, work_dir: Path):
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        """Reports every optimizer step to `progress` and keeps a live loss curve in the work dir.

        A step that is also logged is reported after its log, so the event carries that step's loss.
        """

        last_loss: float | None = None
        pending: dict[str, Any] | None = None

        def _flush(self) -> None:
            if self.pending is not None:
                event, self.pending = {**self.pending, "loss": self.last_loss}, None
                if progress is not None:
                    progress(event)

        def on_step_end(self, args, state, control, **kw):
            self.pending = {"event": "step", "step": state.global_step, "max_steps": state.max_steps,
                            "epoch": state.epoch}
            if not control.should_log:  # DefaultFlowCallback (which runs first) decided about logging
                self._flush()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])
                _write_json(work_dir / "loss_curve.json", _curve(state.log_history))
                if progress is not None:
                    progress({"event": "log", "step": state.global_step, "max_steps": state.max_steps,
                              "loss": self.last_loss, "lr": logs.get("learning_rate"), "epoch": state.epoch})
            self._flush()

        def on_step_begin(self, args, state, control, **kw):
            self._flush()

        def on_train_end(self, args, state, control, **kw):
            self._flush()

    return _Progress()


# -- the stage -----------------------------------------------------------------------------------


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
) -> TrainResult:
    """Fine-tune the model in `model_dir` on the prepared dataset in `data_dir` per `spec`.

    Checkpoints live in ``work_dir/checkpoints``; if a complete one exists (a crashed or interrupted
    earlier call with the same spec), training resumes from the last one. `progress` receives a dict
    (event, step, max_steps, loss, epoch) after every optimizer step and every log; an exception raised
    by it stops training, leaving the checkpoints for a resume. On success the output is published at
    `out_dir` and the checkpoints are deleted unless `keep_checkpoints`.
    """
    import torch
    import transformers
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainerState,
        TrainingArguments,
    )

    model_dir, data_dir, out_dir, work_dir = (Path(p) for p in (model_dir, data_dir, out_dir, work_dir))
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(f"{model_dir} is not a HF model directory (no config.json)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputExistsError(f"output directory {out_dir} exists and is not empty", hint="choose a new directory")
    dataset = load_prepared(data_dir)
    if len(dataset) == 0:
        raise ShadowFTError(f"the prepared dataset in {data_dir} is empty")
    tok_dir = data_dir / "tokenizer" if (data_dir / "tokenizer").is_dir() else model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))

    device, precision = resolve_precision(spec.precision)
    t0 = time.time()

    # The work dir belongs to one training job: refuse to resume checkpoints made with other settings.
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = work_dir / "checkpoints"
    job = {
        "model_dir": str(model_dir.resolve()),
        "data_dir": str(data_dir.resolve()),
        "spec": spec.model_dump(mode="json", exclude={"save_steps", "save_total_limit", "logging_steps"}),
    }
    job_file = work_dir / "job.json"
    done = complete_checkpoints(ckpt_dir)
    if job_file.is_file() and done:
        previous = json.loads(job_file.read_text())
        if previous != job:
            changed = sorted(
                k for k in set(previous.get("spec", {})) | set(job["spec"])
                if previous.get("spec", {}).get(k) != job["spec"].get(k)
            ) + [k for k in ("model_dir", "data_dir") if previous.get(k) != job[k]]
            raise ShadowFTError(
                f"{work_dir} holds checkpoints of a different training job (changed: {', '.join(changed)})",
                hint="use a fresh work_dir, or delete this one to start over",
            )
    _remove_incomplete(ckpt_dir, keep=done)
    _write_json(job_file, job)
    resume = str(done[-1]) if done else None
    resumed_step = int(done[-1].name[len(CHECKPOINT_PREFIX):]) if done else 0

    # Model. Full FT keeps fp32 master weights (mixed precision autocasts); a frozen LoRA base may be
    # held in the half-precision compute dtype.
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    load_dtype = half if (spec.method == "lora" and half is not None) else torch.float32
    transformers.set_seed(spec.seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=load_dtype, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load a causal LM from {model_dir}: {exc}") from None
    original_dtype = _config_dtype(model_dir)
    vocab = model.get_input_embeddings().weight.shape[0]
    max_id = max(max(x) for x in dataset["input_ids"])
    if max_id >= vocab:
        raise ShadowFTError(
            f"token id {max_id} in the prepared data is outside the model's vocabulary ({vocab})",
            hint="prepare the data with the tokenizer of this model family (the Instruct model dir)",
        )
    if spec.gradient_checkpointing:
        model.config.use_cache = False

    if spec.method == "lora":
        model = _add_lora(model, spec)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    args = TrainingArguments(
        output_dir=str(ckpt_dir),
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
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        activation_checkpointing=spec.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if spec.gradient_checkpointing else None,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        eval_strategy="no",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(_pad_id(tokenizer), 8 if device == "cuda" else None),
        callbacks=[_make_callback(progress, work_dir)],
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to `progress`, not stdout
    deterministic = torch.are_deterministic_algorithms_enabled()
    if device == "cpu":  # bitwise-reproducible CPU runs (restored afterwards)
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        if resume and _finished(Path(resume)):
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
    curve = _curve(state.log_history)
    result = TrainResult(
        out_dir=str(out_dir),
        method=spec.method,
        global_step=state.global_step,
        max_steps=state.max_steps,
        epochs_done=float(state.epoch or 0.0),
        # mean of the logged losses over the whole run (the Trainer's own figure covers only the steps
        # run in this process, so it is wrong after a resume)
        train_loss=sum(c["loss"] for c in curve) / len(curve) if curve else _none_if_nan(training_loss),
        final_loss=curve[-1]["loss"] if curve else None,
        resumed_from=Path(resume).name if resume else None,
        resumed_step=resumed_step,
        seconds=round(time.time() - t0, 3),
        samples=len(dataset),
        trainable_params=trainable,
        total_params=total,
        device=device,
        precision=precision,
        lr=spec.effective_lr,
        loss_curve=curve,
    )

    with atomic_output_dir(out_dir) as tmp:  # published by rename only when complete
        trained = trainer.model
        if spec.method == "lora":
            trained.save_pretrained(str(tmp), safe_serialization=True)
            (tmp / "README.md").unlink(missing_ok=True)  # PEFT's model card template
        else:
            target = torch.float32 if spec.full_save_dtype == "fp32" else (original_dtype or torch.float32)
            trained = trained.to(target)
            trained.config.use_cache = True
            trained.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
        _write_json(tmp / "loss_curve.json", curve)
        _write_json(tmp / "train_result.json", {**result.to_dict(), "spec": spec.model_dump(mode="json")})
    if not keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result


def _finished(checkpoint: Path) -> bool:
    """Whether a checkpoint is the last step of its run (global_step reached max_steps)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state.get("max_steps") or 0) > 0 and int(state["global_step"]) >= int(state["max_steps"])


def _none_if_nan(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _config_dtype(model_dir: Path):
    import torch

    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(name)


def _add_lora(model, spec: TrainConfig):
    from peft import LoraConfig, get_peft_model

    targets: list[str] | str = spec.lora_targets
    if targets == ["all-linear"]:
        targets = "all-linear"
    else:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in spec.lora_targets if t not in names]
        if missing:
            import torch

            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"})
            raise ShadowFTError(
                f"train.lora_targets: no module named {', '.join(missing)} in this model",
                hint=f"its linear layers are: {', '.join(linear)} (or use ['all-linear'])",
            )
    alpha = spec.effective_lora_alpha
    config = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    import warnings

    with warnings.catch_warnings():  # PEFT 0.21 calls a transformers API deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)
