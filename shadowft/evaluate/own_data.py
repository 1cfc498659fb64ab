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

Held-out conversations with images (a vision-language pair's data) keep them: the images are written
beside the rows (`images/`, read by the task's `doc_to_image`), and each image's expansion in the
rendered prompt (the processor's tokens for it) becomes lm-eval's `<image>` placeholder again, which
the `hf-multimodal` backend turns back into the processor's marker: the model sees the prompt and the
pictures as training did.
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
#: lm-eval's image placeholder in a prompt (the multimodal models put the image's marker there)
IMAGE_PLACEHOLDER = "<image>"
#: Added to the task's YAML when held-out rows carry images.
DOC_TO_IMAGE = "doc_to_image: !function utils.images   # the row's pictures (PNG files beside the rows)\n"
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


def own_data_rows(data_dir: Path) -> tuple[list[dict[str, Any]], list[str], int]:
    """The rows of the validation split of a prepared SFT dataset: prompt (rendered, up to the last
    reply), answer (that reply, stripped), question (for tables) and, for a row with images, images
    (PIL images; the prompt then has an `<image>` placeholder for each); the stop strings (end-of-turn
    tokens that close the replies) and the longest reply in tokens. Empty without a validation split."""
    from transformers import AutoTokenizer

    from shadowft.data import load_validation

    data_dir = Path(data_dir)
    val = load_validation(data_dir)
    if val is None or not {"input_ids", "labels"} <= set(val.column_names):
        return [], [], 0
    tok = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    with_images = "images" in val.column_names and any(val["images"])
    processor = _processor(data_dir / "tokenizer") if with_images else None
    special_ids = set(tok.all_special_ids)
    special = [str(t) for t in tok.all_special_tokens] + [
        str(t.content) for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False)
    ]
    rows: list[dict[str, Any]] = []
    stops: list[str] = []
    longest = 0
    pictures = val["images"] if with_images else [None] * len(val)
    for ids, labels, images in zip(val["input_ids"], val["labels"], pictures, strict=True):
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
        row: dict[str, Any] = {"prompt": prompt, "answer": answer, "question": display_question(prompt, special)}
        if images:
            row["prompt"] = _collapse_images(processor, prompt, images)
            row["question"] = display_question(row["prompt"].replace(IMAGE_PLACEHOLDER, " "), special)
            row["images"] = images
        rows.append(row)
    return rows, stops, longest


def _processor(path: Path) -> Any:
    from shadowft.vlm_data import load_processor

    return load_processor(path)


def _collapse_images(processor: Any, prompt: str, images: list[Any]) -> str:
    """The rendered prompt with each image's expansion (the processor's text for the image: its marker
    expanded into the image's tokens) replaced by lm-eval's `<image>` placeholder, in order."""
    from shadowft.errors import EvalError
    from shadowft.evaluate.backends.hf_multimodal import image_marker

    marker = image_marker(processor)
    out, rest = "", prompt
    for k, image in enumerate(images):
        ids = processor(text=[marker], images=[[image.convert("RGB")]], add_special_tokens=False)["input_ids"][0]
        expansion = str(processor.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
        head, found, rest = rest.partition(expansion)
        if not found:
            raise EvalError(
                f"cannot find image {k + 1} of a held-out conversation in its rendered prompt",
                hint="set eval.own_data: false to evaluate without the own-data suite",
            )
        out += head + IMAGE_PLACEHOLDER
    return out + rest


def write_own_data_task(data_dir: Path, out_dir: Path) -> Path | None:
    """Write the lm-eval task folder of the validation split of the prepared data in `data_dir` into
    `out_dir`. -> the folder, or None when the data has no validation split (or no reply in it)."""
    rows, stops, longest = own_data_rows(data_dir)
    if not rows:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with_images = any(r.get("images") for r in rows)
    for i, row in enumerate(rows):  # the images as PNG files beside the rows, named in the row
        names = []
        for k, image in enumerate(row.pop("images", None) or []):
            names.append(f"images/{i}-{k}.png")
            (out_dir / "images").mkdir(exist_ok=True)
            image.convert("RGB").save(out_dir / names[-1], format="PNG")
        if with_images:
            row["images"] = names
    (out_dir / f"{OWN_DATA_TASK}.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    shutil.copyfile(TEMPLATE_DIR / "utils.py", out_dir / "utils.py")
    max_gen = min(MAX_GEN_TOKENS, longest + EXTRA_GEN_TOKENS)
    config = (TEMPLATE_DIR / f"{OWN_DATA_TASK}.yaml.template").read_text()
    config = config.replace("UNTIL", json.dumps(stops)).replace("MAX_GEN_TOKS", str(max_gen))
    if with_images:
        config = config.replace("doc_to_target: answer\n", "doc_to_target: answer\n" + DOC_TO_IMAGE)
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
