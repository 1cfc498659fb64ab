"""The `own-data` suite: "did the model learn MY data?", asked on the held-out split of the user's data.

The data stage keeps a validation split that training never sees (`data.validation_ratio` or
`data.validation_sources`), tokenized with Instruct's chat template. This module turns it into an
ordinary lm-eval task folder (a YAML, the rows as JSON lines, the metric functions), so the model
runs through the same evaluation stage, backend, request cache and results schema as every suite:

- the prompt of a row is its conversation up to the last assistant reply, exactly as training
  rendered it (Instruct's template, system prompt, earlier turns), so it runs without applying a
  chat template again (`Suite.rendered_prompts`), and every model (Base, Instruct, the tuned ones)
  sees the format the tuning taught;
- the reference is that last reply; the model's greedy reply is scored by exact match (lm-eval's
  metric, after stripping whitespace: the primary score) and by chrF (sacrebleu's sentence chrF in
  [0, 1], a softer text overlap that credits a nearly right answer).

The folder also describes itself (`shadowft-suite.json`), so `shadowft eval MODEL --suite FOLDER`
runs and names it as a run did.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

OWN_DATA_SUITE = "own-data"
OWN_DATA_TASK = "own_data"
#: A task folder that describes itself: suite name, description, metric, chance, rendered prompts.
SUITE_FILE = "shadowft-suite.json"
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "suites" / "own_data"
#: Generation stops at the template's end of turn; this many tokens beyond the longest reference.
EXTRA_GEN_TOKENS = 16
MAX_GEN_TOKENS = 512
IGNORE_INDEX = -100
_ROLE_WORDS = {"system", "user", "assistant", "human", "gpt", "model"}


def _last_span(labels: list[int]) -> tuple[int, int] | None:
    """Start and end of the last run of trained-on tokens (the last assistant reply)."""
    end = len(labels)
    while end > 0 and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    if end == 0:
        return None
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start, end


def display_question(prompt: str, special: list[str]) -> str:
    """The last user message of a rendered prompt, for tables: the prompt split at the template's
    special tokens, role headers and tags dropped (a heuristic; the full prompt stays in the row)."""
    parts = (
        re.split("|".join(re.escape(s) for s in sorted(special, key=len, reverse=True) if s), prompt)
        if special
        else [prompt]
    )
    for part in reversed(parts):
        text = part.strip()
        first, _, rest = text.partition("\n")
        if first.strip().rstrip(":").lower() in _ROLE_WORDS:
            text = rest.strip()
        if re.sub(r"<[^>]*>", "", text).strip() and text.lower() not in _ROLE_WORDS:
            return " ".join(text.split())
    return " ".join(prompt.split())[-200:]


def own_data_rows(data_dir: Path) -> tuple[list[dict[str, str]], list[str], int]:
    """The rows of the validation split of a prepared SFT dataset: prompt (rendered, up to the last
    reply), answer (that reply, stripped) and question (for tables); the stop strings (end-of-turn
    tokens that close the replies) and the longest reply in tokens. Empty without a validation split."""
    from transformers import AutoTokenizer

    from shadowft.data import load_validation

    data_dir = Path(data_dir)
    val = load_validation(data_dir)
    if val is None or not {"input_ids", "labels"} <= set(val.column_names):
        return [], [], 0
    tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    special_ids = set(tok.all_special_ids)
    special = [str(t) for t in tok.all_special_tokens] + [
        str(t.content) for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False)
    ]
    rows: list[dict[str, str]] = []
    stops: list[str] = []
    longest = 0
    for ids, labels in zip(val["input_ids"], val["labels"], strict=True):
        span = _last_span(labels)
        if span is None:
            continue
        start, end = span
        reply = ids[start:end]
        while reply and reply[-1] in special_ids:  # the end-of-turn token the reply was trained to end with
            stop = str(tok.decode([reply[-1]], skip_special_tokens=False))
            if stop and stop not in stops:
                stops.append(stop)
            reply = reply[:-1]
        prompt = str(tok.decode(ids[:start], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        answer = str(tok.decode(reply, skip_special_tokens=True, clean_up_tokenization_spaces=False)).strip()
        longest = max(longest, len(reply))
        rows.append({"prompt": prompt, "answer": answer, "question": display_question(prompt, special)})
    return rows, stops, longest


def write_own_data_task(data_dir: Path, out_dir: Path) -> Path | None:
    """Write the lm-eval task folder of the validation split of the prepared data in `data_dir` into
    `out_dir`. -> the folder, or None when the data has no validation split (or no reply in it)."""
    rows, stops, longest = own_data_rows(data_dir)
    if not rows:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{OWN_DATA_TASK}.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    shutil.copyfile(TEMPLATE_DIR / "utils.py", out_dir / "utils.py")
    max_gen = min(MAX_GEN_TOKENS, longest + EXTRA_GEN_TOKENS)
    config = (TEMPLATE_DIR / f"{OWN_DATA_TASK}.yaml.template").read_text()
    config = config.replace("UNTIL", json.dumps(stops)).replace("MAX_GEN_TOKS", str(max_gen))
    (out_dir / f"{OWN_DATA_TASK}.yaml").write_text(config, encoding="utf-8")
    (out_dir / SUITE_FILE).write_text(json.dumps(suite_description(len(rows)), indent=2) + "\n")
    return out_dir


def suite_description(n: int) -> dict[str, Any]:
    return {
        "name": OWN_DATA_SUITE,
        "description": f"Your data's held-out split ({n} conversations): the greedy reply to each prompt (as "
        "training rendered it) against the reference reply; exact match, chrF beside it.",
        "metric": "exact_match",
        "filter": "strip",
        "chance": 0.0,
        "rendered_prompts": True,
    }
