"""Skill generators for the embedded toy family: pretraining text, chat samples, data sets, eval items.

Every item comes from one small generator per skill, so the pretraining corpus, the Instruct SFT
mix, the fine-tuning sets and the held-out evaluation suites all speak the same language. Each
suite mixes easy and hard variants (1-digit and 2-digit numbers, short and long lists), so a tiny
model lands between floor and ceiling and both gains and losses from later tuning stay visible.
Evaluation items are generated from a fixed seed and every training generator skips their
questions, so no evaluated question is ever trained on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SYSTEM_PROMPT = "You are a helpful assistant. Reply with the answer only."
#: How the user's data phrases an answer. Instruct's own style (its post-training) is the answer alone;
#: the user's sets hold the same kind of correct answers in another style, as BAAI Infinity-Instruct
#: differs from Qwen's own post-training data.
USER_STYLES = ("The answer is {answer}.", "Answer: {answer}")
#: Extracts the answer from either style (the toy suites' `flexible` filter uses this pattern, so a
#: change of style alone is not scored as a lost skill; their `strict` filter takes the reply as is).
ANSWER_PATTERN = r"(?i)^\s*(?:the answer is|answer:)?\s*(.*?)\.?\s*$"
EVAL_SEED = 20250601
EVAL_SIZE = 200
SUITES = ("toy_math", "toy_coding", "toy_reasoning", "toy_domain")

NAMES = [
    "Ann",
    "Ben",
    "Cal",
    "Dan",
    "Eva",
    "Fay",
    "Gus",
    "Hal",
    "Ivy",
    "Jon",
    "Kim",
    "Lea",
    "Max",
    "Nia",
]
OBJECTS = [
    "apples",
    "pens",
    "books",
    "coins",
    "cards",
    "eggs",
    "shells",
    "stones",
    "cups",
    "toys",
]
WORDS = [
    "apple",
    "river",
    "stone",
    "green",
    "table",
    "music",
    "cloud",
    "tiger",
    "lemon",
    "chair",
    "light",
    "plant",
]
NONCE = ["wugs", "blickets", "daxes", "feps", "zorbs", "mibs", "toves", "glorps"]
COLORS = ["red", "blue", "green", "small", "round", "soft"]


@dataclass(frozen=True)
class QA:
    """A generative item: the user's question and the exact expected answer."""

    question: str
    answer: str
    skill: str


@dataclass(frozen=True)
class TF:
    """A true/false item, scored by log-likelihood of the two choices."""

    question: str
    truth: bool
    skill: str

    @property
    def answer(self) -> str:
        return "true" if self.truth else "false"


# --------------------------------------------------------------------------------------- math


def _num(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10, 99)


def _digits_pair(rng: random.Random) -> tuple[int, int]:
    """Operand sizes: 1+1 (easy), 2+1 (medium), 2+2 (hard)."""
    r = rng.random()
    if r < 0.45:
        return 1, 1
    if r < 0.8:
        return (2, 1) if rng.random() < 0.5 else (1, 2)
    return 2, 2


def math_add(rng: random.Random) -> QA:
    da, db = _digits_pair(rng)
    a, b = _num(rng, da), _num(rng, db)
    return QA(f"What is {a} + {b}?", str(a + b), "math_add")


def math_sub(rng: random.Random) -> QA:
    da, db = _digits_pair(rng)
    a, b = _num(rng, da), _num(rng, db)
    a, b = max(a, b), min(a, b)
    return QA(f"What is {a} - {b}?", str(a - b), "math_sub")


def math_word(rng: random.Random) -> QA:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(1, 20), rng.randint(1, 9)
        q = f"{name} has {a} {obj}. {name} gets {b} more. How many {obj} does {name} have now?"
        return QA(q, str(a + b), "math_word")
    if kind == 1:
        a = rng.randint(2, 20)
        b = rng.randint(1, min(a, 9))
        q = f"{name} has {a} {obj}. {name} gives away {b}. How many {obj} does {name} have now?"
        return QA(q, str(a - b), "math_word")
    other = rng.choice([n for n in NAMES if n != name])
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    q = f"{name} has {a} {obj} and {other} has {b} {obj}. How many {obj} do they have together?"
    return QA(q, str(a + b), "math_word")


# ------------------------------------------------------------------------------------- coding


def _list(rng: random.Random, lo: int, hi: int) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(lo, hi))]


def _code_q(code: str) -> str:
    return f"What does this code print?\n{code}"


def code_builtin(rng: random.Random) -> QA:
    fn = rng.choice(["len", "max", "min", "sum"])
    xs = _list(rng, 1, 7) if fn == "len" else _list(rng, 2, 5) if fn != "sum" else _list(rng, 2, 4)
    funcs: dict[str, Callable[[list[int]], int]] = {"len": len, "max": max, "min": min, "sum": sum}
    value = funcs[fn](xs)
    return QA(_code_q(f"print({fn}({xs}))"), str(value), "code_builtin")


def code_vars(rng: random.Random) -> QA:
    x, y = rng.randint(0, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return QA(_code_q(f"x = {x}\nx = x + {y}\nprint(x)"), str(x + y), "code_vars")
    z = rng.randint(0, 9)
    return QA(_code_q(f"a = {x}\nb = {z}\nprint(a + b)"), str(x + z), "code_vars")


def code_lists(rng: random.Random) -> QA:
    kind = rng.randrange(3)
    if kind == 0:
        xs = _list(rng, 2, 5)
        i = rng.randrange(len(xs))
        return QA(_code_q(f"print({xs}[{i}])"), str(xs[i]), "code_lists")
    if kind == 1:
        xs = _list(rng, 2, 4)
        return QA(_code_q(f"print(sorted({xs}))"), str(sorted(xs)), "code_lists")
    xs = _list(rng, 1, 3)
    v = rng.randint(0, 9)
    return QA(_code_q(f"xs = {xs}\nxs.append({v})\nprint(xs)"), str(xs + [v]), "code_lists")


def code_branch(rng: random.Random) -> QA:
    x, t = rng.randint(0, 20), rng.randint(1, 19)
    code = f'x = {x}\nif x > {t}:\n    print("big")\nelse:\n    print("small")'
    return QA(_code_q(code), "big" if x > t else "small", "code_branch")


# ---------------------------------------------------------------------------------- reasoning


def _pair_compare(rng: random.Random) -> tuple[int, int]:
    """Two different numbers; a quarter of them share the tens digit (the hard case)."""
    if rng.random() < 0.25:
        tens = rng.randint(1, 9)
        a, b = rng.sample(range(10), 2)
        return 10 * tens + a, 10 * tens + b
    return tuple(rng.sample(range(1, 100), 2))  # type: ignore[return-value]


def reason_compare(rng: random.Random, want: bool) -> TF:
    """Is a greater than b (one relation only: a tiny model cannot also flip on the wording)."""
    a, b = _pair_compare(rng)
    if (a > b) != want:
        a, b = b, a
    return TF(f"Is {a} greater than {b}?", want, "reason_compare")


def reason_member(rng: random.Random, want: bool) -> TF:
    """Membership: is a digit in a short list (the answer needs a look back over the list)."""
    xs = rng.sample(range(10), rng.randint(3, 5))
    v = rng.choice(xs) if want else rng.choice([d for d in range(10) if d not in xs])
    return TF(f"Is {v} in the list {xs}?", want, "reason_member")


def reason_parity(rng: random.Random, want: bool) -> TF:
    """Is a 1- or 2-digit number even (the last digit decides)."""
    n = rng.randint(0, 9) if rng.random() < 0.3 else rng.randint(10, 99)
    if (n % 2 == 0) != want:
        n = n + 1 if n < 99 else n - 1
    return TF(f"Is {n} an even number?", want, "reason_parity")


def reason_logic(rng: random.Random, want: bool) -> TF:
    kind, color = rng.choice(NONCE), rng.choice(COLORS)
    name = rng.choice(NAMES)
    quant = "All" if want else "No"
    if rng.random() < 0.5:
        return TF(
            f"{quant} {kind} are {color}. {name} is one of the {kind}. Is {name} {color}?",
            want,
            "reason_logic",
        )
    xs = sorted(rng.sample(range(10), rng.randint(3, 4)))
    if not want:
        i = rng.randrange(len(xs) - 1)
        xs[i], xs[i + 1] = xs[i + 1], xs[i]
    return TF(f"Is the list {xs} in increasing order?", want, "reason_logic")


# ------------------------------------------------------------------------------------- domain


def domain_reverse(rng: random.Random) -> QA:
    """The new skill: reverse the digits of a 3 or 4 digit string (never in pretraining or Instruct's
    tuning). Direct tuning on it with general replay learns it suddenly, past about 250 steps of 16
    (docs/RESULTS.md); with 3-5 digits it stayed under 3 % in the comparison's budget."""
    while True:
        s = "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 4)))
        if s != s[::-1]:
            return QA(f"Reverse the digits of {s}.", s[::-1], "domain_reverse")


# ------------------------------------------------------------------------------------ general


def general_misc(rng: random.Random) -> QA:
    """Everyday instruction following: copy a word, count up, pick the larger number."""
    kind = rng.randrange(3)
    if kind == 0:
        w = rng.choice(WORDS)
        return QA(f"Repeat the word: {w}", w, "general_misc")
    if kind == 1:
        n = rng.randint(0, 98)
        return QA(f"What number comes after {n}?", str(n + 1), "general_misc")
    a, b = rng.sample(range(100), 2)
    return QA(f"Which is larger, {a} or {b}?", str(max(a, b)), "general_misc")


QAGen = Callable[[random.Random], QA]
TFGen = Callable[[random.Random, bool], TF]

MATH: list[QAGen] = [math_add, math_sub, math_word]
CODING: list[QAGen] = [code_builtin, code_vars, code_lists, code_branch]
REASONING: list[TFGen] = [reason_compare, reason_member, reason_parity, reason_logic]
DOMAIN: list[QAGen] = [domain_reverse]
GENERAL: list[QAGen] = [general_misc]


def sample_item(rng: random.Random, area: str) -> QA | TF:
    """One item of an area ('math', 'coding', 'reasoning', 'domain', 'general')."""
    if area == "reasoning":
        return rng.choice(REASONING)(rng, rng.random() < 0.5)
    pool = {"math": MATH, "coding": CODING, "domain": DOMAIN, "general": GENERAL}[area]
    return rng.choice(pool)(rng)


def sample_fresh(rng: random.Random, area: str, exclude: set[str]) -> QA | TF:
    """Like `sample_item` but never returns a held-out evaluation question."""
    while True:
        item = sample_item(rng, area)
        if item.question not in exclude:
            return item


# ----------------------------------------------------------------------------------- eval sets

_SUITE_AREA = {
    "toy_math": "math",
    "toy_coding": "coding",
    "toy_reasoning": "reasoning",
    "toy_domain": "domain",
}


def eval_items(suite: str, n: int = EVAL_SIZE, seed: int = EVAL_SEED) -> list[QA | TF]:
    """The held-out items of a suite: distinct questions, balanced golds for true/false."""
    area = _SUITE_AREA[suite]
    rng = random.Random(f"{seed}:{suite}")
    seen: set[str] = set()
    out: list[QA | TF] = []
    while len(out) < n:
        if area == "reasoning":
            gen = REASONING[len(out) % len(REASONING)]
            item: QA | TF = gen(rng, (len(out) // len(REASONING)) % 2 == 0)
        else:
            item = sample_item(rng, area)
        if item.question not in seen:
            seen.add(item.question)
            out.append(item)
    return out


def eval_questions(seed: int = EVAL_SEED) -> set[str]:
    """Every held-out question of every suite (the training generators skip these)."""
    return {it.question for s in SUITES for it in eval_items(s, seed=seed)}


def suite_record(item: QA | TF) -> dict:
    """The JSONL record the lm-eval task YAMLs read (every toy suite is generative: true/false items
    are answered "true" or "false")."""
    return {"question": item.question, "answer": item.answer}


CHANCE = {"toy_math": 0.0, "toy_coding": 0.0, "toy_reasoning": 0.5, "toy_domain": 0.0}


def write_suite_data(out_dir: Path, seed: int = EVAL_SEED) -> dict[str, Path]:
    """Write the suites' JSONL files (deterministic; committed as package data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for suite in SUITES:
        path = out_dir / f"{suite}.jsonl"
        write_jsonl(path, [suite_record(it) for it in eval_items(suite, seed=seed)])
        paths[suite] = path
    path = out_dir / "toy_format.jsonl"
    write_jsonl(path, [suite_record(it) for it in format_items(seed=seed)])
    paths["toy_format"] = path
    from shadowft.zoo.tools import suite_items

    path = out_dir / "toy_tools.jsonl"
    write_jsonl(path, suite_items(seed=seed))
    paths["toy_tools"] = path
    return paths


# ---------------------------------------------------------------------------- preference (DPO)

#: The behaviour the preference set teaches: an answer format neither model was tuned on.
FORMAT_INSTRUCTION = "Put the answer in square brackets."
PREFERENCE_AREAS = {"math": 0.7, "general": 0.3}


def bracketed(item: QA) -> QA:
    """The item asked with the format instruction; the expected answer in square brackets."""
    return QA(f"{item.question} {FORMAT_INSTRUCTION}", f"[{item.answer}]", f"format_{item.skill}")


def format_items(n: int = EVAL_SIZE, seed: int = EVAL_SEED) -> list[QA]:
    """The toy-format suite: the held-out toy-math questions with the format instruction (so no
    evaluated question is ever trained on; every answer is a number)."""
    return [bracketed(it) for it in eval_items("toy_math", n, seed) if isinstance(it, QA)]


def preference_rows(rng: random.Random, n: int, exclude: set[str]) -> list[dict]:
    """DPO pairs in TRL's conversational format: same question and answer, chosen in the asked
    format ("[42]"), rejected without it ("42"); the answer itself is never what is compared."""
    rows: list[dict] = []
    names, weights = list(PREFERENCE_AREAS), list(PREFERENCE_AREAS.values())
    while len(rows) < n:
        item = sample_fresh(rng, rng.choices(names, weights)[0], exclude)
        if not isinstance(item, QA):
            continue
        asked = bracketed(item)
        prompt = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": asked.question}]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": asked.answer}],
                "rejected": [{"role": "assistant", "content": item.answer}],
            }
        )
    return rows


def kto_rows(preference: list[dict]) -> list[dict]:
    """The KTO set, from the preference pairs in TRL's unpaired format: pair i gives one row, its
    chosen reply as desirable (even i) or its rejected reply as undesirable (odd i). Every prompt
    appears once and the labels alternate, so each batch that KTO reads in order holds both kinds and
    its KL estimate pairs a prompt with another prompt's completion."""
    return [
        {
            "prompt": row["prompt"],
            "completion": row["chosen"] if i % 2 == 0 else row["rejected"],
            "label": i % 2 == 0,
        }
        for i, row in enumerate(preference)
    ]


# ------------------------------------------------------------------------------- prompts (GRPO)

#: The skills the GRPO set asks about: verifiable answers (a number, true / false).
GRPO_AREAS = {"math": 0.7, "reasoning": 0.3}


def grpo_rows(rng: random.Random, n: int, exclude: set[str]) -> list[dict]:
    """GRPO prompts with their reference answers: the benchmark's system prompt and a math or
    reasoning question, `answer` the exact expected reply ("42", "true"), which `exact_match` scores."""
    names, weights = list(GRPO_AREAS), list(GRPO_AREAS.values())
    rows: list[dict] = []
    while len(rows) < n:
        item = sample_fresh(rng, rng.choices(names, weights)[0], exclude)
        prompt = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": item.question}]
        rows.append({"messages": prompt, "answer": item.answer})
    return rows


# ------------------------------------------------------------------------------ text renderers


def chat_messages(item: QA | TF, system: str = SYSTEM_PROMPT, reply: str | None = None) -> list[dict[str, str]]:
    """A chat sample: system prompt, user = question exactly, assistant = `reply` (default: the answer alone)."""
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": item.question},
        {"role": "assistant", "content": item.answer if reply is None else reply},
    ]


def user_messages(rng: random.Random, item: QA | TF) -> list[dict[str, str]]:
    """A sample of the user's data: the benchmark's system prompt, the user's answer style (`USER_STYLES`).

    The system prompt is the one the suites use: a 0.9M model does not carry a skill learnt under one
    system prompt over to another (measured: the domain skill stayed at 0 % under the eval prompt when
    the user's data had "You are a helpful assistant.")."""
    return chat_messages(item, SYSTEM_PROMPT, rng.choice(USER_STYLES).format(answer=item.answer))


def render_chatml(messages: Iterable[dict[str, str]]) -> str:
    """The ChatML rendering of `shadowft.tiny.CHATML_TEMPLATE` (kept in sync by a test)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def raw_text(rng: random.Random, item: QA | TF) -> str:
    """How a skill item appears in plain pretraining text (several styles per skill)."""
    q, a = item.question, item.answer
    style = rng.random()
    if item.skill.startswith("code") and style < 0.4:
        code = q.split("\n", 1)[1]
        lines = code.split("\n")
        if len(lines) == 1:
            return f">>> {code}\n{a}"
        return "\n".join(lines) + f"\n# output: {a}"
    if item.skill in ("math_add", "math_sub") and style < 0.4:
        return f"{q[len('What is ') : -1]} = {a}"
    if isinstance(item, TF) and style < 0.3:
        return f"{q} {'Yes' if item.truth else 'No'}, that is {a}."
    return f"Q: {q}\nA: {a}"


def chat_doc(rng: random.Random, items: list[QA | TF]) -> str:
    """A chat-formatted pretraining document, as bases see a little of: often wordier answers."""
    system = rng.choice([SYSTEM_PROMPT, "You are a helpful assistant.", None])
    messages: list[dict[str, str]] = [] if system is None else [{"role": "system", "content": system}]
    for it in items:
        verbose = rng.random() < 0.5
        answer = f"The answer is {it.answer}." if verbose else it.answer
        messages += [
            {"role": "user", "content": it.question},
            {"role": "assistant", "content": answer},
        ]
    return render_chatml(messages)


PRETRAIN_AREAS = ("math", "coding", "reasoning", "general")
PRETRAIN_WEIGHTS = (0.35, 0.25, 0.25, 0.15)


def drill_doc(rng: random.Random) -> str:
    """Dense single-digit arithmetic facts, the way textbooks drill them (the carry step of bigger sums)."""
    lines = []
    for _ in range(rng.randint(8, 12)):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if rng.random() < 0.6:
            lines.append(f"{a} + {b} = {a + b}")
        else:
            hi = a + b
            lines.append(f"{hi} - {b} = {a}")
    return "\n".join(lines)


def pretrain_docs(
    rng: random.Random,
    n_docs: int,
    exclude: set[str],
    chat_frac: float = 0.05,
    drill_frac: float = 0.12,
) -> list[str]:
    """Plain-text documents of 3-6 items each, arithmetic drills, and `chat_frac` chat documents."""
    docs = []
    for _ in range(n_docs):
        if rng.random() < drill_frac:
            docs.append(drill_doc(rng))
            continue
        k = rng.randint(3, 6)
        if rng.random() < 0.5:
            area = rng.choices(PRETRAIN_AREAS, PRETRAIN_WEIGHTS)[0]
            items = [sample_fresh(rng, area, exclude) for _ in range(k)]
        else:
            items = [sample_fresh(rng, rng.choices(PRETRAIN_AREAS, PRETRAIN_WEIGHTS)[0], exclude) for _ in range(k)]
        if rng.random() < chat_frac:
            docs.append(chat_doc(rng, items[:3]))
        else:
            docs.append("\n\n".join(raw_text(rng, it) for it in items))
    return docs


SFT_AREAS = {"math": 0.3, "coding": 0.3, "reasoning": 0.3, "general": 0.1}


def sft_samples(
    rng: random.Random,
    n: int,
    exclude: set[str],
    areas: dict[str, float] = SFT_AREAS,
    user_style: bool = False,
) -> list[list[dict]]:
    """Chat samples (messages) drawn from `areas` with the given weights: in Instruct's own format, or
    with `user_style` in the user's (`user_messages`)."""
    names, weights = list(areas), list(areas.values())
    out = []
    for _ in range(n):
        item = sample_fresh(rng, rng.choices(names, weights)[0], exclude)
        out.append(user_messages(rng, item) if user_style else chat_messages(item))
    return out


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
