"""toy-count: an offline image suite (`!function utils.NAME` in the YAML): how many dots (1-5)?

Each row of `data/toy_count.jsonl` describes a picture of 1-5 dots, one colour, each in its own cell
of a 3 x 3 grid; the picture is drawn from the row (`shadowft.zoo.pictures`), so the suite has no
image files and never needs the hub. Regenerate the data with `python shadowft/suites/toy_count/utils.py`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

SEED = 20261209
PER_COUNT = 10
QUESTION = "How many dots are there?"


def dots_image(doc: dict[str, Any]) -> list[Any]:
    """doc_to_image: the row's picture (one PIL image)."""
    from shadowft.zoo.pictures import draw

    return [draw(doc)]


def strip_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter `strict`: the stripped reply as it is."""
    return [[r.strip() for r in resp] for resp in resps]


def rows(seed: int = SEED, per_count: int = PER_COUNT) -> list[dict[str, Any]]:
    """The suite's items: `per_count` pictures of each count 1-5."""
    from shadowft.zoo.pictures import dots_row

    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(per_count):
        for n in range(1, 6):
            out.append({"id": f"count-{n}-{i}", "question": QUESTION, "answer": str(n), **dots_row(rng, n)})
    return out


def write_data(path: Path) -> int:
    """Write the suite's rows as JSON lines. -> the number of rows"""
    items = rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return len(items)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "toy_count.jsonl"
    print(f"wrote {write_data(target)} rows to {target}")
