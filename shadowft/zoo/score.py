"""A fast internal check of the toy family (greedy generation, answer extracted as the suites do).

The numbers that count come from lm-eval (`shadowft.evaluate`); this scorer exists so the family
build can be tuned and sanity-checked in seconds without lm-eval's overhead. It applies the same
prompt as the toy suites: system prompt + user question under the chat template.
"""

from __future__ import annotations

import re
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


def extract_answer(reply: str) -> str:
    """The answer in a reply of either style (`corpus.ANSWER_PATTERN`, as the suites' flexible filter)."""
    m = re.match(corpus.ANSWER_PATTERN, reply)
    return m.group(1).strip() if m else "[invalid]"


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


def score_model(
    model_dir: Path,
    suites: tuple[str, ...] = corpus.SUITES,
    fmt: Format = "chat",
    limit: int | None = None,
    strict: bool = False,
) -> dict[str, float]:
    """Accuracy per suite on the held-out toy items: the extracted answer (the suites' flexible score),
    or with `strict` the whole reply, equal to the expected answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    scores = {}
    for suite in suites:
        items = corpus.eval_items(suite)[:limit]
        outs = [_cut(o) for o in _generate(model, tokenizer, [_prompt(it.question, fmt) for it in items])]
        got = outs if strict else [extract_answer(o) for o in outs]
        scores[suite] = sum(g == it.answer for g, it in zip(got, items)) / len(items)
    return scores
