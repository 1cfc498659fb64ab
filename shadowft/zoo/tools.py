"""Tool calling for the embedded family: its tool-aware chat template, the toolbox, the tool-calling set
(`data/tools.jsonl`, `zoo:tools`) and the toy-tools suite's items.

The template is ChatML as before for every conversation without tools (byte for byte: a test asserts
it), so adding it changed nothing the family was trained or evaluated on. With ``tools`` it appends a
short tool list to the system message; an assistant's calls render as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` lines and a tool's result as a ``tool``
turn. Neither model has seen a tool call: like the domain skill, calling is learnt from the user's
data, and the toy-tools suite scores it (the call parsed as JSON: name and arguments).
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from shadowft.zoo import corpus

#: ChatML (shadowft.tiny.CHATML_TEMPLATE) plus tools: the tool list in the system message (one made
#: when the conversation has none), calls as <tool_call> lines, results as `tool` turns.
TOOLS_BLOCK = (
    "{%- set ns = namespace(tools='') -%}"
    "{%- if tools -%}{%- set ns.tools = 'Tools:' -%}{%- for t in tools -%}"
    "{%- set f = t.function if t.function is defined else t -%}"
    "{%- set p = f.parameters.properties if f.parameters is defined and f.parameters.properties is defined "
    "else {} -%}"
    "{%- set ns.tools = ns.tools + '\\n- ' + f.name + '(' + (p | list | join(', ')) + ')' "
    "+ ((': ' + f.description) if f.description is defined and f.description else '') -%}"
    "{%- endfor -%}{%- endif -%}"
)
TOOL_CHAT_TEMPLATE = (
    TOOLS_BLOCK + "{%- for message in messages -%}"
    "{%- if loop.first and ns.tools and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n' + ns.tools + '<|im_end|>' + '\\n' }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' and ns.tools -%}"
    "{{ '<|im_start|>system\\n' + message['content'] + '\\n\\n' + ns.tools + '<|im_end|>' + '\\n' }}"
    "{%- elif message['role'] == 'assistant' and message.tool_calls -%}"
    "{{ '<|im_start|>assistant\\n' + ((message['content'] + '\\n') if message['content'] else '') }}"
    "{%- for c in message.tool_calls -%}"
    "{%- set f = c.function if c.function is defined else c -%}"
    "{{ ('\\n' if not loop.first else '') + '<tool_call>' + ({'name': f.name, 'arguments': f.arguments} | tojson)"
    " + '</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>' + '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _fn(name: str, description: str, params: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {k: {"type": v} for k, v in params.items()},
                "required": list(params),
            },
        },
    }


#: The toolbox of the tool-calling set and suite.
TOOLS: list[dict[str, Any]] = [
    _fn("add", "Add two numbers.", {"a": "integer", "b": "integer"}),
    _fn("subtract", "Subtract b from a.", {"a": "integer", "b": "integer"}),
    _fn("reverse_digits", "Reverse a string of digits.", {"digits": "string"}),
]
#: The tool list as the template renders it (the suite's system prompt carries it: lm-eval renders
#: the chat without `tools`); kept equal to the template's rendering by a test.
TOOLS_TEXT = (
    "Tools:\n- add(a, b): Add two numbers.\n- subtract(a, b): Subtract b from a.\n"
    "- reverse_digits(digits): Reverse a string of digits."
)
SUITE_SYSTEM_PROMPT = f"{corpus.SYSTEM_PROMPT}\n\n{TOOLS_TEXT}"
_ADD_SUB = re.compile(r"^What is (\d+) ([+-]) (\d+)\?$")
_REVERSE = re.compile(r"^Reverse the digits of (\d+)\.$")


def expected_call(item: corpus.QA | corpus.TF) -> dict[str, Any] | None:
    """The call that answers an item ({"name", "arguments"}), or None when no tool answers it."""
    m = _ADD_SUB.match(item.question)
    if m:
        name = "add" if m.group(2) == "+" else "subtract"
        return {"name": name, "arguments": {"a": int(m.group(1)), "b": int(m.group(3))}}
    m = _REVERSE.match(item.question)
    if m:
        return {"name": "reverse_digits", "arguments": {"digits": m.group(1)}}
    return None


def tool_row(rng: random.Random, item: corpus.QA | corpus.TF) -> dict[str, Any]:
    """A row of the tool-calling set (TRL / OpenAI messages with a `tools` column): the call, its
    result as a tool turn, then the answer in the user's style; a question no tool answers is answered
    directly."""
    call = expected_call(item)
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": corpus.SYSTEM_PROMPT},
        {"role": "user", "content": item.question},
    ]
    if call is not None:
        msgs += [
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]},
            {"role": "tool", "content": item.answer},
        ]
    msgs.append({"role": "assistant", "content": rng.choice(corpus.USER_STYLES).format(answer=item.answer)})
    return {"messages": msgs, "tools": TOOLS}


#: Areas of the tool-calling set: mostly questions a tool answers, some that none does.
TOOL_AREAS = {"math": 0.45, "domain": 0.35, "general": 0.2}


def tool_rows(rng: random.Random, n: int, exclude: set[str]) -> list[dict[str, Any]]:
    """`n` rows of the tool-calling set (never a held-out question; math word problems left out:
    no tool answers them as asked)."""
    rows: list[dict[str, Any]] = []
    names, weights = list(TOOL_AREAS), list(TOOL_AREAS.values())
    while len(rows) < n:
        item = corpus.sample_fresh(rng, rng.choices(names, weights)[0], exclude)
        if item.skill == "math_word":
            continue
        rows.append(tool_row(rng, item))
    return rows


def suite_items(n: int = corpus.EVAL_SIZE, seed: int = corpus.EVAL_SEED) -> list[dict[str, str]]:
    """The toy-tools suite: held-out toy-math (addition, subtraction) and toy-domain questions,
    alternating, each with the call that answers it as JSON (so no evaluated question is trained on)."""
    pools = [
        [it for it in corpus.eval_items(s, seed=seed) if expected_call(it) is not None]
        for s in ("toy_math", "toy_domain")
    ]
    out: list[dict[str, str]] = []
    for k in range(n):
        pool = pools[k % 2]
        item = pool[k // 2 % len(pool)]
        out.append({"question": item.question, "answer": json.dumps(expected_call(item))})
    return out


def parse_call(reply: str) -> dict[str, Any] | None:
    """The first call in a reply (``<tool_call>{...}</tool_call>``, or a bare JSON object), or None."""
    m = re.search(r"<tool_call>(.*?)(?:</tool_call>|$)", reply, re.S)
    text = (m.group(1) if m else reply).strip()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return None
    if isinstance(value, dict) and "function" in value and isinstance(value["function"], dict):
        value = value["function"]
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    args = value.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (json.JSONDecodeError, RecursionError, ValueError):
            return None
    return {"name": value["name"], "arguments": args}


def score_call(reply: str, gold: str) -> dict[str, float]:
    """toy-tools metrics of one reply: `tool_call` (the right name and arguments), `tool_name`."""
    want = json.loads(gold)
    got = parse_call(reply)
    return {
        "tool_call": float(got is not None and got == want),
        "tool_name": float(got is not None and got["name"] == want["name"]),
    }
