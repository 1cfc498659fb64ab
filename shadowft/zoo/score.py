"""A fast internal check of the toy family (greedy exact match, true/false log-likelihood).

The numbers that count come from lm-eval (`shadowft.evaluate`); this scorer exists so the family
build can be tuned and sanity-checked in seconds without lm-eval's overhead. It applies the same
prompt as the toy suites: system prompt + user question under the chat template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from shadowft.zoo import corpus

Format = Literal["chat", "raw"]


def _prompt(question: str, fmt: Format) -> str:
    if fmt == "raw":
        return f"Q: {question}\nA:"
    messages = [
        {"role": "system", "content": corpus.SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    return corpus.render_chatml(messages) + "<|im_start|>assistant\n"


def _cut(text: str) -> str:
    return text.split("<|im_end|>")[0].split("\n")[0].strip()


@torch.no_grad()
def _generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 12,
    batch_size: int = 100,
) -> list[str]:
    outs = []
    tokenizer.padding_side = "left"
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(
            prompts[i : i + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=False)
    return outs


@torch.no_grad()
def _loglik(model, tokenizer, prompt: str, continuation: str) -> float:
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)))


def score_model(
    model_dir: Path,
    suites: tuple[str, ...] = corpus.SUITES,
    fmt: Format = "chat",
    limit: int | None = None,
) -> dict[str, float]:
    """Accuracy per suite on the held-out toy items."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    scores = {}
    for suite in suites:
        items = corpus.eval_items(suite)[:limit]
        if isinstance(items[0], corpus.TF):
            sep = " " if fmt == "raw" else ""
            hits = 0
            for it in items:
                assert isinstance(it, corpus.TF)
                pr = _prompt(it.question, fmt)
                lt, lf = (
                    _loglik(model, tokenizer, pr, sep + "true"),
                    _loglik(model, tokenizer, pr, sep + "false"),
                )
                hits += (lt > lf) == it.truth
            scores[suite] = hits / len(items)
        else:
            outs = _generate(model, tokenizer, [_prompt(it.question, fmt) for it in items])
            scores[suite] = sum(_cut(o) == it.answer for o, it in zip(outs, items)) / len(items)
    return scores
