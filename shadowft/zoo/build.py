"""Build the embedded Base/Instruct family: tokenizer, Base pretraining, Instruct tuning, data sets.

The family is a real instance of the Shadow-FT problem, small enough for a 2-core CPU: Base is
pretrained on raw skill text (with a few % chat documents, as real bases see), Instruct is Base
tuned on chat-formatted instructions with a system prompt, and the fine-tuning sets hold a general
mix and a new domain skill neither model knows. Everything is deterministic from the seed (fixed
step counts, seeded generators, deterministic kernels, a fixed thread count), built into a
temporary directory and published by an atomic rename with `family.json` written last.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field

from shadowft.errors import ShadowFTError
from shadowft.files import atomic_output_dir
from shadowft.zoo import corpus
from shadowft.zoo.tools import TOOL_CHAT_TEMPLATE, tool_rows

FAMILY_VERSION = "toy-v3"
MANIFEST = "family.json"
Preset = Literal["default", "ci"]


class TrainSpec(BaseModel):
    """One training phase: fixed step count (never wall-clock), AdamW, warmup + cosine."""

    steps: int = Field(description="optimizer steps (fixed, so builds are reproducible)")
    batch_size: int = Field(32, description="sequences per step")
    lr: float = Field(description="peak learning rate")
    min_lr_ratio: float = Field(0.1, description="cosine floor as a fraction of lr")
    warmup: int = Field(30, description="linear warmup steps")
    weight_decay: float = Field(0.05, description="AdamW weight decay")


class FamilyConfig(BaseModel):
    """Everything that determines the family's bits (with the seed and the thread count)."""

    preset: Preset = "default"
    vocab_size: int = Field(512, description="byte-level BPE vocabulary incl. special tokens")
    hidden_size: int = Field(128, description="model width")
    intermediate_size: int = Field(384, description="MLP width")
    num_layers: int = Field(4, description="decoder layers")
    num_heads: int = Field(4, description="attention heads (head_dim = hidden / heads)")
    num_kv_heads: int = Field(2, description="key/value heads (grouped-query attention)")
    seq_len: int = Field(128, description="pretraining sequence length")
    pretrain_docs: int = Field(30000, description="pretraining documents generated")
    chat_frac: float = Field(0.05, description="share of chat-formatted pretraining documents")
    pretrain: TrainSpec = TrainSpec(steps=800, lr=3e-3, warmup=50)
    sft_samples: int = Field(
        12000, description="chat samples for Instruct tuning (its post-training: about 10x the user's 2000)"
    )
    sft: TrainSpec = TrainSpec(steps=600, lr=5e-4, warmup=20)
    general_size: int = Field(2000, description="samples in data/general.jsonl")
    domain_size: int = Field(2000, description="samples in data/domain.jsonl")
    bf16_autocast: bool = Field(
        True,
        description="bf16 autocast on a CPU with native bf16 (about 1.5x faster); fp32 on one without "
        "(AVX2 only: emulated bf16 is about 20x slower)",
    )
    threads: int = Field(
        1,
        description="torch threads; part of the determinism contract (1 is robust on a shared CPU)",
    )

    @classmethod
    def for_preset(cls, preset: Preset) -> FamilyConfig:
        """`default` is the real family; `ci` is a seconds-long build for mechanics tests only."""
        if preset == "default":
            return cls()
        return cls(
            preset="ci",
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            pretrain_docs=600,
            pretrain=TrainSpec(steps=12, batch_size=8, lr=3e-3, warmup=2),
            sft_samples=200,
            sft=TrainSpec(steps=6, batch_size=8, lr=5e-4, warmup=1),
            general_size=50,
            domain_size=50,
        )


class FamilyPaths(BaseModel):
    """Where a built family lives."""

    root: Path
    base: Path
    instruct: Path
    data: Path
    manifest: Path

    @classmethod
    def at(cls, root: Path) -> FamilyPaths:
        root = Path(root)
        return cls(
            root=root,
            base=root / "base",
            instruct=root / "instruct",
            data=root / "data",
            manifest=root / MANIFEST,
        )

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text())


def shadowft_home() -> Path:
    return Path(os.environ.get("SHADOWFT_HOME", ".shadowft"))


def default_family_dir(seed: int = 0, preset: Preset = "default") -> Path:
    """`$SHADOWFT_HOME/zoo/<version>-<preset>-s<seed>`: where the family is cached when no --out is given."""
    return shadowft_home() / "zoo" / f"{FAMILY_VERSION}-{preset}-s{seed}"


@contextmanager
def _deterministic(threads: int):
    """Deterministic kernels and a fixed thread count for the duration of a build."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # denormal floats make CPU kernels 10-30x slower
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_flush_denormal(False)
        torch.set_num_threads(prev_threads)


def cpu_has_native_bf16() -> bool:
    """oneDNN's own test: bf16 kernels in hardware (AVX512 / AMX). On an AVX2-only CPU (CI's) bf16
    matmuls are emulated, about 20x slower than fp32: a from-scratch build there took over an hour."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_bf16(cfg: FamilyConfig) -> bool:
    """Whether this build autocasts to bf16: asked for and fast on this CPU."""
    return cfg.bf16_autocast and cpu_has_native_bf16()


def _lr_at(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _train(model, batches, spec: TrainSpec, cfg: FamilyConfig, desc: str, progress: bool) -> list[float]:
    """A plain AdamW loop over `batches()` (a callable yielding (input_ids, labels, mask))."""
    from tqdm.auto import tqdm

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    losses = []
    bar = tqdm(range(spec.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        ids, labels, mask = batches()
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, spec)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16(cfg)):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{_tail_mean(losses):.3f}")
    model.eval()
    return losses


def _tail_mean(losses: list[float], n: int = 20) -> float:
    """The mean of the last `n` losses: a training's loss, less noisy than its last step's."""
    return sum(losses[-n:]) / len(losses[-n:])


def _pretrain_batches(tokenizer, docs: list[str], cfg: FamilyConfig, gen: torch.Generator):
    """Pack documents (separated by <|endoftext|>) into fixed rows; sample rows with `gen`."""
    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(sep)
    n_rows = len(stream) // cfg.seq_len
    rows = torch.tensor(stream[: n_rows * cfg.seq_len], dtype=torch.long).view(n_rows, cfg.seq_len)
    bs = cfg.pretrain.batch_size

    def next_batch():
        idx = torch.randint(0, n_rows, (bs,), generator=gen)
        ids = rows[idx]
        return ids, ids, torch.ones_like(ids)

    return next_batch, len(stream)


def chat_example(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and labels of a chat sample: loss on assistant contents and their <|im_end|> only."""
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        head = tokenizer(f"<|im_start|>{m['role']}\n", add_special_tokens=False)["input_ids"]
        body = tokenizer(f"{m['content']}<|im_end|>", add_special_tokens=False)["input_ids"]
        tail = tokenizer("\n", add_special_tokens=False)["input_ids"]
        train = m["role"] == "assistant"
        ids += head + body + tail
        labels += [-100] * len(head) + (body if train else [-100] * len(body)) + [-100] * len(tail)
    return ids, labels


def _sft_batches(tokenizer, samples: list[list[dict]], spec: TrainSpec, gen: torch.Generator):
    """Right-padded batches of chat samples drawn with `gen`."""
    encoded = [chat_example(tokenizer, s) for s in samples]
    pad = tokenizer.pad_token_id

    def next_batch():
        idx = torch.randint(0, len(encoded), (spec.batch_size,), generator=gen).tolist()
        return right_padded([encoded[i] for i in idx], pad)

    return next_batch


def right_padded(
    samples: list[tuple[list[int], list[int]]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, labels) samples as right-padded tensors. -> (input_ids, labels, attention_mask)"""
    width = max(len(x) for x, _ in samples)
    ids = torch.full((len(samples), width), pad, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for r, (x, y) in enumerate(samples):
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        mask[r, : len(x)] = 1
    return ids, labels, mask


def _instruct_samples(cfg: FamilyConfig, seed: int, exclude: set[str]) -> list[list[dict]]:
    """The chat samples of Instruct's post-training (the family's, and its variants')."""
    return corpus.sft_samples(random.Random(f"{seed}:sft"), cfg.sft_samples, exclude)


def _tune_instruct(
    model, tokenizer, samples: list[list[dict]], spec: TrainSpec, cfg: FamilyConfig, seed: int, progress: bool
) -> list[float]:
    """Instruct's post-training phase on `model` (Base, as pretrained): batches drawn with the seed's
    own generator, so a variant with the family's spec repeats it bit for bit."""
    gen = torch.Generator().manual_seed(seed + 1)
    return _train(model, _sft_batches(tokenizer, samples, spec, gen), spec, cfg, "tune instruct", progress)


def _model_config(cfg: FamilyConfig, tokenizer):
    from transformers import Qwen3Config

    return Qwen3Config(  # type: ignore[call-arg]  # rope_theta: accepted as a legacy kwarg
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        rope_theta=10000.0,
    )


def _save(model, tokenizer, out: Path) -> None:
    """A normal HF model dir whose config, generation config and tokenizer agree on EOS = <|im_end|>."""
    from transformers import GenerationConfig

    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_data(data_dir: Path, cfg: FamilyConfig, seed: int, exclude: set[str]) -> dict[str, int]:
    """Fine-tuning sets (general mix, new domain skill, preference pairs for DPO, the KTO set made from
    them, prompts with verifiable answers for GRPO) and the held-out eval sets of every skill."""
    data_dir.mkdir(parents=True)
    rng = random.Random(f"{seed}:data")
    general_mix = {"math": 0.25, "coding": 0.25, "reasoning": 0.25, "general": 0.25}
    # The user's data: another source than Instruct's post-training, in another answer style.
    general = corpus.sft_samples(rng, cfg.general_size, exclude, general_mix, user_style=True)
    domain = corpus.sft_samples(rng, cfg.domain_size, exclude, {"domain": 1.0}, user_style=True)
    corpus.write_jsonl(data_dir / "general.jsonl", ({"messages": m} for m in general))
    corpus.write_jsonl(data_dir / "domain.jsonl", ({"messages": m} for m in domain))
    # Its own generator, so adding the set left the other data sets unchanged.
    preference = corpus.preference_rows(random.Random(f"{seed}:preference"), cfg.general_size // 2, exclude)
    corpus.write_jsonl(data_dir / "preference.jsonl", preference)
    kto = corpus.kto_rows(preference)  # derived from the pairs: no generator of its own
    corpus.write_jsonl(data_dir / "kto.jsonl", kto)
    grpo = corpus.grpo_rows(random.Random(f"{seed}:grpo"), cfg.general_size // 2, exclude)  # its own generator
    corpus.write_jsonl(data_dir / "grpo.jsonl", grpo)
    tools = tool_rows(random.Random(f"{seed}:tools"), cfg.general_size // 2, exclude)  # its own generator too
    corpus.write_jsonl(data_dir / "tools.jsonl", tools)
    paths = corpus.write_suite_data(data_dir / "eval")
    return {
        "general": len(general),
        "domain": len(domain),
        "preference": len(preference),
        "kto": len(kto),
        "grpo": len(grpo),
        "tools": len(tools),
        **{k: corpus.EVAL_SIZE for k in paths},
    }


def _build(tmp: Path, cfg: FamilyConfig, seed: int, progress: bool) -> dict:
    from transformers import AutoModelForCausalLM

    from shadowft.tiny import build_tokenizer

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _stage(progress, 1, "corpus and tokenizer")
    exclude = corpus.eval_questions()
    rng = random.Random(f"{seed}:pretrain")
    docs = corpus.pretrain_docs(rng, cfg.pretrain_docs, exclude, cfg.chat_frac)
    sft = _instruct_samples(cfg, seed, exclude)
    sft_text = [corpus.render_chatml(m) for m in sft[:500]]
    tokenizer = build_tokenizer(docs[:3000] + sft_text, vocab_size=cfg.vocab_size)
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE  # ChatML, and tools (renders the rest exactly as ChatML)
    tokenizer.save_pretrained(tmp / "tokenizer")
    timings["corpus_tokenizer_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    _stage(
        progress, 2, f"pretrain Base ({cfg.pretrain.steps} steps of {cfg.pretrain.batch_size} x {cfg.seq_len} tokens)"
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_model_config(cfg, tokenizer), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    batches, n_tokens = _pretrain_batches(tokenizer, docs, cfg, gen)
    pre_losses = _train(model, batches, cfg.pretrain, cfg, "pretrain base", progress)
    _save(model, tokenizer, tmp / "base")
    timings["pretrain_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _stage(progress, 3, f"tune Instruct ({cfg.sft.steps} steps of {cfg.sft.batch_size} chat samples)")
    sft_losses = _tune_instruct(model, tokenizer, sft, cfg.sft, cfg, seed, progress)
    _save(model, tokenizer, tmp / "instruct")
    timings["instruct_s"] = time.perf_counter() - t

    t = time.perf_counter()
    _stage(progress, 4, "data sets (general, domain, preference) and eval suites")
    counts = _write_data(tmp / "data", cfg, seed, exclude)
    timings["data_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return {
        "version": FAMILY_VERSION,
        "seed": seed,
        "config": cfg.model_dump(),
        "system_prompt": corpus.SYSTEM_PROMPT,
        "chance": corpus.CHANCE,
        "params": sum(p.numel() for p in model.parameters()),
        "pretrain_tokens": n_tokens,
        "loss": {
            "pretrain_first": pre_losses[0],
            "pretrain_last": _tail_mean(pre_losses),
            "instruct_first": sft_losses[0],
            "instruct_last": _tail_mean(sft_losses),
        },
        "data": counts,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "torch": torch.__version__,
        "autocast": "bf16" if autocast_bf16(cfg) else "fp32",
    }


def build_family(
    out: Path | None = None,
    seed: int = 0,
    force: bool = False,
    preset: Preset = "default",
    progress: bool = True,
    config: FamilyConfig | None = None,
    from_scratch: bool = False,
) -> FamilyPaths:
    """Install (or return the cached) toy family in `out` (default: `default_family_dir(seed, preset)`).

    The default family (seed 0, default config) is copied from the package, checksums verified,
    in a second; any other seed or config, or `from_scratch=True`, trains it (minutes). A
    directory counts as built only once `family.json` exists; it is written last, inside a
    temporary sibling directory that is then renamed into place, so an interrupted build leaves
    nothing that looks finished.
    """
    from shadowft.zoo import shipped

    cfg = config or FamilyConfig.for_preset(preset)
    out = Path(out) if out is not None else default_family_dir(seed, cfg.preset)
    paths = FamilyPaths.at(out)
    if paths.manifest.exists() and not force:
        found = paths.read_manifest()
        if (
            found.get("seed") != seed
            or found.get("config") != cfg.model_dump()
            or found.get("version") != FAMILY_VERSION
        ):
            raise ShadowFTError(
                f"{out} holds a different toy family (seed {found.get('seed')}, version {found.get('version')})",
                hint="pass --force to rebuild it, or choose another --out",
            )
        if (not from_scratch or found.get("source") != "shipped") and not _stale_install(found, cfg, seed):
            return paths
    if out.exists() and not paths.manifest.exists() and any(out.iterdir()) and not force:
        raise ShadowFTError(
            f"{out} exists, is not empty and holds no toy family",
            hint="choose another --out or pass --force",
        )
    source = None if from_scratch else shipped.find_shipped(FAMILY_VERSION, cfg.preset, seed, cfg.model_dump())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if source is not None:
            manifest = shipped.install_shipped(source, tmp)
        else:
            if progress:
                _announce(cfg)
            with _deterministic(cfg.threads):
                manifest = _build(tmp, cfg, seed, progress)
            manifest["source"] = "built"
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            shutil.rmtree(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _stale_install(found: dict, cfg: FamilyConfig, seed: int) -> bool:
    """An install of the shipped family whose files differ from the package's copy (e.g. a data set
    added since, as the KTO set was): it is installed again, in seconds."""
    from shadowft.zoo import shipped

    if found.get("source") != "shipped":
        return False
    source = shipped.find_shipped(FAMILY_VERSION, cfg.preset, seed, cfg.model_dump())
    if source is None:
        return False
    return json.loads((source / MANIFEST).read_text()).get("checksums") != found.get("checksums")


def _stage(progress: bool, number: int, what: str, total: int = 4) -> None:
    """One line per build stage; the training stages then show a bar with step, loss and ETA."""
    if progress:
        import sys

        print(f"[{number}/{total}] {what}", file=sys.stderr, flush=True)


def _announce(cfg: FamilyConfig) -> None:
    """Say up front what a from-scratch build does and roughly how long it takes."""
    import sys

    steps = cfg.pretrain.steps + cfg.sft.steps
    minutes = (
        "a few seconds"
        if cfg.preset == "ci"
        else "about 5 minutes on a quiet 2-core CPU"
        if autocast_bf16(cfg)
        else "fp32, this CPU has no native bf16: about 18 minutes"
    )
    print(
        f"Building the toy family from scratch ({cfg.preset}: {steps} training steps on "
        f"{cfg.threads} thread(s), {minutes}): tokenizer, Base pretraining, Instruct tuning, data sets.",
        file=sys.stderr,
        flush=True,
    )


def build_instruct_variant(
    family: FamilyPaths, out: Path, sft: TrainSpec, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """An Instruct of the same Base post-trained less or more (`sft` replaces the family's own phase):
    pairs at other distances sigma(Base, Instruct), for measuring how far a Base update carries.
    Same chat samples and sampling seed as the family's own Instruct; written to a temporary sibling
    and renamed into place. Returns the manifest (also `variant.json` in `out`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shadowft.pair import similarity

    cfg = FamilyConfig.model_validate(family.read_manifest()["config"])
    with atomic_output_dir(out) as tmp:  # refuses a non-empty `out` before the training
        with _deterministic(cfg.threads):
            tokenizer = AutoTokenizer.from_pretrained(str(family.base))
            model = AutoModelForCausalLM.from_pretrained(str(family.base), dtype=torch.float32, use_safetensors=True)
            samples = _instruct_samples(cfg, seed, corpus.eval_questions())
            t = time.perf_counter()
            losses = _tune_instruct(model, tokenizer, samples, sft, cfg, seed, progress)
            _save(model, tokenizer, tmp)
        manifest = {
            "family": str(family.root),
            "sft": sft.model_dump(),
            "seed": seed,
            "sigma_to_base": float(similarity(family.base, tmp).mean),
            "loss_last": _tail_mean(losses),
            "seconds": round(time.perf_counter() - t, 1),
            "autocast": "bf16" if autocast_bf16(cfg) else "fp32",
        }
        (tmp / "variant.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
