"""Tiny real models for tests and quick demos (in the spirit of mergekit's `make_picollama`).

These are standard transformers architectures with random weights, saved as ordinary HF model
directories (config, tokenizer with a chat template, safetensors). They exercise the same code
paths as real checkpoints; only the size differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

Arch = Literal["llama", "qwen3"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_TOKENIZER_TEXT = """
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } : ; , .
def add(a, b): return a + b
print(sum([1, 2, 3]))
Question: what is 12 + 30? Answer: 42
Is 7 greater than 3? true. Is 2 greater than 9? false.
system user assistant You are a helpful assistant.
"""


def build_tokenizer(texts: list[str] | None = None, vocab_size: int = 384):
    """Train a deterministic byte-level BPE tokenizer with a ChatML chat template.

    `<|im_end|>` ends an assistant turn and is the EOS token, as in Qwen's Instruct models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = texts if texts is not None else [_TOKENIZER_TEXT] * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(
    arch: Arch = "llama",
    vocab_size: int = 384,
    hidden_size: int = 32,
    num_layers: int = 2,
    tied: bool = False,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
):
    """A small but standard config of the given architecture."""
    from transformers import LlamaConfig, Qwen3Config

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen3":
        return Qwen3Config(head_dim=hidden_size // 4, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose 'llama' or 'qwen3'")


def random_model(config: Any, seed: int = 0) -> Any:
    """A randomly initialised causal LM for `config`, reproducible from `seed`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Norm weights start at exactly 1.0; give them some spread so that every tensor is informative.
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def perturb(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """Add relative Gaussian noise in place (sigma to the original is about 0.4 * scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.add_((scale * p.float().abs().mean() * noise).to(p.dtype))
    return model


def save_model(model, tokenizer, out: Path, max_shard_size: str | int | None = None) -> Path:
    """Save as a HF model dir (safetensors; sharded when `max_shard_size` is smaller than the model)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def make_trio(
    root: Path,
    arch: Arch = "llama",
    tied: bool = False,
    max_shard_size: str | int | None = None,
    dtype: torch.dtype = torch.float32,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a Base / Instruct / tuned-Base trio of tiny models under `root`.

    Instruct and tuned Base are Base plus independent small perturbations, so the pair sits at a
    realistic sigma (about 0.03) and the delta (tuned - base) is known exactly.
    """
    root = Path(root)
    tokenizer = build_tokenizer()
    config = tiny_config(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        tied=tied,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    paths = {}
    for name, noise_seed in (("base", None), ("instruct", seed + 1), ("tuned", seed + 2)):
        model = random_model(config, seed=seed)
        if noise_seed is not None:
            perturb(model, 0.075, noise_seed)
        model = model.to(dtype)
        if model.generation_config is not None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        paths[name] = save_model(model, tokenizer, root / name, max_shard_size=max_shard_size)
    return paths
