"""Will it fit? A per-device memory estimate for a training job, and the refusal when it cannot fit.

The arithmetic (bytes per parameter as in the ZeRO paper; activations as in Korthikanti et al. 2022):

- full fine-tuning keeps fp32 master weights (4 B), fp32 gradients (4 B) and Adam's two moments (8 B)
  per parameter: 16 B x params, divided by the number of ranks under FSDP / ZeRO-3, whole under DDP;
- LoRA holds the frozen model in the compute dtype (2 B in bf16, 4 B in fp32; sharded under ZeRO-3)
  plus 16 B per adapter parameter;
- activations (an allowance, not a measurement): 17 x hidden x (compute bytes) per token per layer
  stored for the backward pass (with flash / sdpa attention; 2 x hidden with gradient checkpointing, plus
  one layer recomputed), plus the fp32 logits and their gradient (8 B x vocab per token);
- plus a fixed allowance per device (CUDA context and allocator: 1.5 GiB; a CPU process: 0.5 GiB).

Every figure is an estimate: real use differs with kernels, fragmentation and sequence lengths.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shadowft.config import DEFAULT_LORA_TARGETS, TrainConfig
from shadowft.errors import ShadowFTError
from shadowft.train.resources import LaunchPlan

GiB = 1024**3

#: Architectures of the paper's models (from their published config.json), so `shadowft plan` can
#: size them offline by hub id. Base and Instruct share them.
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-4B": dict(
        hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True, model_type="qwen3",
    ),
    "Qwen/Qwen3-8B": dict(
        hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False, model_type="qwen3",
    ),
    "meta-llama/Llama-3.1-8B": dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, model_type="llama",
    ),
}  # fmt: skip
# Gemma-3's vision-language models (the paper's multimodal family): a SigLIP tower (400M) in front of
# the Gemma-3 language model; Base `-pt` and Instruct `-it` share them.
_SIGLIP = dict(
    model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
    num_attention_heads=16, image_size=896, patch_size=14, vision_use_head=False,
)  # fmt: skip
KNOWN_MODELS.update({
    f"google/gemma-3-{size}": dict(
        model_type="gemma3", mm_tokens_per_image=256, vision_config=_SIGLIP,
        text_config=dict(
            model_type="gemma3_text", hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, vocab_size=262208,
            tie_word_embeddings=True,
        ),
    )
    for size, h, inter, layers, heads, kv, hd in (
        ("4b", 2560, 10240, 34, 8, 4, 256),
        ("12b", 3840, 15360, 48, 16, 8, 256),
        ("27b", 5376, 21504, 62, 32, 16, 128),
    )
})  # fmt: skip
_ALIASES = {"-Base": "", "-Instruct": "", "-instruct": "", "-pt": "", "-it": ""}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder-only transformer (Llama / Qwen / Mistral layout)."""

    params: int
    layers: int
    hidden: int
    vocab: int
    #: in x out of each projection in one layer, by module name (for LoRA adapter sizes)
    projections: dict[str, tuple[int, int]]
    #: a vision-language model: the vision tower's and projector's parameters (included in `params`)
    vision_params: int = 0
    #: a trained vision tower's activations per image (bytes per compute byte), and image tokens
    vision_activations_per_image: int = 0

    def lora_params(self, rank: int, targets: list[str]) -> int:
        names = list(self.projections) if targets == ["all-linear"] else targets
        return self.layers * sum(rank * sum(self.projections[n]) for n in names if n in self.projections)


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """Parameter count and sizes from a HF config.json (dense Llama-style decoders, and vision-language
    models made of one in front of a SigLIP / CLIP vision tower)."""
    if isinstance(cfg.get("text_config"), dict) and isinstance(cfg.get("vision_config"), dict):
        return _vlm_shape(cfg)
    try:
        h, n_layers, vocab = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        hd = int(cfg.get("head_dim") or h // heads)
        inter = int(cfg["intermediate_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ShadowFTError(
            f"cannot size this model from its config.json (missing {exc})",
            hint="the estimate knows dense Llama / Qwen / Mistral style decoders",
        ) from None
    proj = {
        "q_proj": (h, heads * hd),
        "k_proj": (h, kv * hd),
        "v_proj": (h, kv * hd),
        "o_proj": (heads * hd, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    per_layer = sum(i * o for i, o in proj.values()) + 2 * h
    if str(cfg.get("model_type", "")).startswith(("qwen3", "gemma3")):
        per_layer += 2 * hd  # q_norm, k_norm
    if str(cfg.get("model_type", "")).startswith("gemma3"):
        per_layer += 2 * h  # pre- and post-feedforward norms
    if cfg.get("attention_bias"):
        per_layer += heads * hd + 2 * kv * hd + h
    embed = vocab * h
    params = embed + n_layers * per_layer + h + (0 if cfg.get("tie_word_embeddings") else embed)
    return ModelShape(params=params, layers=n_layers, hidden=h, vocab=vocab, projections=proj)


def _vlm_shape(cfg: dict[str, Any]) -> ModelShape:
    """A vision-language model: its language model's shape, plus the vision tower and projector
    (ViT encoder layers: attention and MLP with biases, two norms; patch and position embeddings)."""
    text = _text_config(cfg)
    lm = shape_from_config(text)
    vc = cfg["vision_config"]
    try:
        vh, vi, vl = int(vc["hidden_size"]), int(vc["intermediate_size"]), int(vc["num_hidden_layers"])
        image, patch = int(vc["image_size"]), int(vc["patch_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ShadowFTError(
            f"cannot size this model's vision tower from its config.json (missing vision_config {exc})",
            hint="the estimate knows SigLIP / CLIP vision towers",
        ) from None
    clip = str(vc.get("model_type", "")).startswith("clip")
    patches = (image // patch) ** 2
    tower = 3 * patch * patch * vh + (0 if clip else vh) + (patches + clip) * vh  # patch and position embeddings
    tower += vl * (4 * (vh * vh + vh) + 2 * vh * vi + vi + vh + 4 * vh) + 2 * vh + (3 * vh if clip else 0)
    if vc.get("vision_use_head", not clip):
        tower += vh * vh * 4 + 4 * vh + 2 * vh * vi + vi + vh + 2 * vh + vh  # SigLIP's attention-pooling head
    th = lm.hidden
    projector = vh * th + vh if cfg.get("model_type") == "gemma3" else vh * th + th * th + 2 * th
    return ModelShape(
        params=lm.params + tower + projector,
        layers=lm.layers,
        hidden=th,
        vocab=lm.vocab,
        projections=lm.projections,
        vision_params=tower + projector,
        vision_activations_per_image=patches * vl * 17 * vh,
    )


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's config of a VLM config (vocab and tying may sit at the top level)."""
    text = dict(cfg["text_config"])
    for key in ("vocab_size", "tie_word_embeddings"):
        if key not in text and key in cfg:
            text[key] = cfg[key]
    text.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
    return text


def model_shape(model: str | Path) -> ModelShape:
    """The shape of a local model dir (its config.json) or of a known hub id (`KNOWN_MODELS`)."""
    path = Path(model)
    if (path / "config.json").is_file():
        return shape_from_config(json.loads((path / "config.json").read_text()))
    name = str(model)
    for suffix, repl in _ALIASES.items():
        name = name.replace(suffix, repl)
    if name in KNOWN_MODELS:
        return shape_from_config(KNOWN_MODELS[name])
    raise ShadowFTError(
        f"cannot size {model}: not a local model dir, and not one of {', '.join(KNOWN_MODELS)}",
        hint="download the model (its config.json is enough) and pass its directory",
    )


@dataclass
class MemoryEstimate:
    """Bytes per device for one training setup, and whether it fits the devices."""

    model: str
    method: str
    precision: str
    distributed: str
    world_size: int
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    params: int
    trainable: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    device: str
    device_bytes: float  # capacity of one device (GPU memory; on CPU this process's share of RAM)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= 0.95 * self.device_bytes

    def setting(self) -> str:
        parts = [self.method, f"{self.world_size} x {self.device}", self.distributed]
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "fits": self.fits}


def estimate(
    shape: ModelShape,
    *,
    model: str,
    method: str,
    precision: str,
    distributed: str,
    world_size: int,
    batch_size: int,
    seq_len: int,
    gradient_checkpointing: bool,
    lora_rank: int = 8,
    lora_targets: list[str] | None = None,
    device: str = "cuda",
    device_bytes: float = 80 * GiB,
    train_vision: bool = False,
) -> MemoryEstimate:
    """The per-device memory of one training setup (see the module docstring for the arithmetic).
    A vision-language model's tower and projector are frozen unless `train_vision`: held, not trained
    (a trained tower adds its activations for one image per sample)."""
    b = 2 if precision in ("bf16", "fp16") else 4
    shard = world_size if distributed in ("fsdp", "deepspeed") else 1
    p = shape.params
    if method == "full":
        trainable = p if train_vision else p - shape.vision_params
        weights, grads, opt = 4 * p / shard, 4 * trainable / shard, 8 * trainable / shard
    else:
        trainable = shape.lora_params(lora_rank, lora_targets or list(DEFAULT_LORA_TARGETS))
        weights = b * p / shard + 4 * trainable / shard
        grads, opt = 4 * trainable / shard, 8 * trainable / shard
    tokens = batch_size * seq_len
    per_layer = 17 * shape.hidden * b  # bytes stored per token per layer for the backward pass
    if gradient_checkpointing:
        acts = tokens * (shape.layers * 2 * shape.hidden * b + per_layer)
    else:
        acts = tokens * shape.layers * per_layer
    acts += tokens * shape.vocab * 8  # fp32 logits + their gradient
    if train_vision:
        acts += batch_size * shape.vision_activations_per_image * b
    return MemoryEstimate(
        model=model,
        method=method,
        precision=precision,
        distributed=distributed,
        world_size=world_size,
        batch_size=batch_size,
        seq_len=seq_len,
        gradient_checkpointing=gradient_checkpointing,
        params=p,
        trainable=trainable,
        weights=weights,
        gradients=grads,
        optimizer=opt,
        activations=float(acts),
        overhead=(1.5 if device == "cuda" else 0.5) * GiB,
        device=device,
        device_bytes=device_bytes,
    )


def device_capacity(device: str, local_processes: int) -> float:
    """Bytes one process may use: the first GPU's memory, or this node's RAM shared by its processes."""
    if device == "cuda":
        import torch

        return float(torch.cuda.get_device_properties(0).total_memory)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / max(1, local_processes)
    except OSError:
        pass
    return float("inf")


def estimate_for(
    model: str | Path,
    spec: TrainConfig,
    plan: LaunchPlan,
    seq_len: int,
    precision: str | None = None,
    device_bytes: float | None = None,
) -> MemoryEstimate:
    """The estimate for training `model` per `spec` as `plan` launches it."""
    if precision is None:
        precision = spec.precision if spec.precision != "auto" else ("bf16" if plan.device == "cuda" else "fp32")
    return estimate(
        model_shape(model),
        model=str(model),
        method=spec.method,
        precision=precision,
        distributed=plan.distributed,
        world_size=plan.world_size,
        batch_size=spec.batch_size,
        seq_len=seq_len,
        gradient_checkpointing=spec.gradient_checkpointing,
        lora_rank=spec.lora_rank,
        lora_targets=spec.lora_targets,
        device=plan.device,
        device_bytes=device_bytes or device_capacity(plan.device, plan.num_processes),
        train_vision=not (getattr(spec, "freeze_vision_tower", True) and getattr(spec, "freeze_projector", True)),
    )


def estimate_for_job(
    model_dir: Path, data_dir: Path, spec: TrainConfig, plan: LaunchPlan, *, trust_remote_code: bool = False
) -> MemoryEstimate:
    """The estimate for a prepared dataset: its longest sample sets the sequence length, and the
    objective the sequences per sample (`Objective.sequences_per_sample`: a DPO pair runs its chosen
    and rejected replies side by side, a KTO row its completion and the KL one: twice the sequences)."""
    from shadowft.train.objectives import get_objective

    stats = json.loads((Path(data_dir) / "stats.json").read_text())
    packing = bool(stats.get("packing", False))
    objective = get_objective(spec.objective)
    seq = int(stats["longest"]) * (spec.batch_size if packing else 1) + objective.generated_tokens(spec)
    batch = 1 if packing else spec.batch_size * objective.sequences_per_sample
    est = estimate_for(model_dir, spec.model_copy(update={"batch_size": batch}), plan, seq)
    return est


def alternatives(est: MemoryEstimate, shape: ModelShape, max_devices: int) -> list[MemoryEstimate]:
    """Settings that would fit where `est` does not: checkpointing, LoRA, ZeRO-3, more devices."""
    tries = []
    for method in dict.fromkeys([est.method, "lora"]):
        for dist in dict.fromkeys([est.distributed, "deepspeed"]):
            for world in dict.fromkeys([est.world_size, max(est.world_size, max_devices)]):
                for ckpt in dict.fromkeys([est.gradient_checkpointing, True]):
                    if dist == "none" and world > 1:
                        dist = "ddp"
                    if dist in ("fsdp", "deepspeed") and world == 1:
                        continue
                    cand = estimate(
                        shape,
                        model=est.model,
                        method=method,
                        precision=est.precision,
                        distributed=dist,
                        world_size=world,
                        batch_size=est.batch_size,
                        seq_len=est.seq_len,
                        gradient_checkpointing=ckpt,
                        device=est.device,
                        device_bytes=est.device_bytes,
                    )
                    if cand.fits:
                        tries.append(cand)
    # fewest changes first: same method, then fewer devices, then no checkpointing
    tries.sort(key=lambda c: (c.method != est.method, c.world_size, c.gradient_checkpointing, c.total))
    seen, out = set(), []
    for c in tries:
        if c.setting() not in seen:
            seen.add(c.setting())
            out.append(c)
    return out[:4]


def check_fit(est: MemoryEstimate, max_devices: int | None = None) -> None:
    """Refuse, before any model loads, a job that cannot fit, naming settings that would."""
    if est.fits:
        return
    shape = model_shape(est.model)
    fits = alternatives(est, shape, max_devices or max(est.world_size, 8 if est.device == "cuda" else 1))
    better = "; ".join(f"{c.setting()} ({c.total / GiB:.1f} GiB)" for c in fits) or "none found"
    raise ShadowFTError(
        f"training {est.model} ({est.setting()}) needs about {est.total / GiB:.1f} GiB per device "
        f"(estimate), but a device has {est.device_bytes / GiB:.1f} GiB",
        hint=f"settings that would fit: {better}. `shadowft plan CONFIG` prints the estimate.",
    )


def format_estimate(est: MemoryEstimate) -> str:
    """A few lines for the terminal: the per-device breakdown."""
    g = GiB
    shape = model_shape(est.model)
    vision = f" (vision tower and projector {shape.vision_params / 1e6:.0f}M)" if shape.vision_params else ""
    lines = [
        f"model      {est.model}: {est.params / 1e9:.2f}B parameters{vision}, {est.trainable:,} trained ({est.method})",
        f"setup      {est.setting()}, {est.precision}, batch {est.batch_size} x {est.seq_len} tokens per device",
        f"per device weights {est.weights / g:.1f} GiB + gradients {est.gradients / g:.1f} + optimizer "
        f"{est.optimizer / g:.1f} + activations {est.activations / g:.1f} + overhead {est.overhead / g:.1f}"
        f" = {est.total / g:.1f} GiB (estimate)",
        f"device     {est.device_bytes / g:.1f} GiB: {'fits' if est.fits else 'does NOT fit'}",
    ]
    return "\n".join(lines)


def sizing_table(batch_size: int = 1, seq_len: int = 4096, gpu_gib: float = 80.0) -> str:
    """The README's table: the paper's models x LoRA / full x 1 / 8 GPUs (bf16), GiB per GPU."""
    rows = [
        "| model | method | GPUs | strategy | GiB per GPU | with gradient checkpointing |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]

    def cell(est: MemoryEstimate) -> str:
        return f"{est.total / GiB:.1f}" + ("" if est.fits else " (no)")

    for name in KNOWN_MODELS:
        shape = model_shape(name)
        for method, world, dist in (
            ("lora", 1, "none"),
            ("lora", 8, "ddp"),
            ("full", 1, "none"),
            ("full", 8, "ddp"),
            ("full", 8, "deepspeed"),
        ):
            plain, ckpt = (
                estimate(
                    shape,
                    model=name,
                    method=method,
                    precision="bf16",
                    distributed=dist,
                    world_size=world,
                    batch_size=batch_size,
                    seq_len=seq_len,
                    gradient_checkpointing=c,
                    device_bytes=gpu_gib * GiB,
                )
                for c in (False, True)
            )
            strat = {"none": "one process", "ddp": "DDP", "deepspeed": "ZeRO-3"}[dist]
            rows.append(f"| {name} | {method} | {world} | {strat} | {cell(plain)} | {cell(ckpt)} |")
    return "\n".join(rows)


def plan_run(
    config: Any, *, gpus: int | None = None, gpu_gib: float | None = None
) -> tuple[LaunchPlan, MemoryEstimate]:
    """The launch plan and memory estimate of a run config's Base training (no model loads)."""
    from shadowft.config import ZOO_PREFIX
    from shadowft.train.resources import resolve_launch

    spec: TrainConfig = config.train
    plan = resolve_launch(spec, gpus=gpus)
    model = config.pair.base
    if model.startswith(ZOO_PREFIX):
        from shadowft.zoo.shipped import SHIPPED_ROOT  # the family shipped in the package

        found = sorted(SHIPPED_ROOT.glob(f"*/{model[len(ZOO_PREFIX) :]}/config.json"))
        if not found:
            raise ShadowFTError(f"no shipped model for {model}", hint="use pair.base=zoo:base or a model dir")
        model = str(found[-1].parent)
    from shadowft.train.objectives import get_objective

    seq = config.data.max_length + get_objective(spec.objective).generated_tokens(spec)  # GRPO's completions
    return plan, estimate_for(model, spec, plan, seq, device_bytes=gpu_gib * GiB if gpu_gib else None)
