"""toy-chart: a ChartQA-like offline image suite (`!function utils.NAME` in the YAML).

Each row of `data/toy_chart.jsonl` describes a bar chart (three bars, values 1-9, read off against grid
lines one unit apart) and asks for one bar's value. The picture is drawn from the row
(`shadowft.zoo.pictures`), so the suite has no image files and never needs the hub. Scored as ChartQA
is scored: relaxed accuracy (lm-eval's chartqa `RelaxedCorrectness`: a number within 5 % of the
answer, text exactly), on the number a reply names (`flexible`) or on the reply as it is (`strict`).
Regenerate the data with `python shadowft/suites/toy_chart/utils.py` (the same file every time).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

SEED = 20261208
ITEMS = 60
QUESTION = "What is the value of the {position} bar?"


def chart_image(doc: dict[str, Any]) -> list[Any]:
    """doc_to_image: the row's chart (one PIL image)."""
    from shadowft.zoo.pictures import draw

    return [draw(doc)]


def strip_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter `strict`: the stripped reply as it is."""
    return [[r.strip() for r in resp] for resp in resps]


def relaxed_accuracy(references: list[str], predictions: list[str]) -> float:
    """ChartQA's relaxed correctness (lm-eval's own implementation) of the (filtered) reply."""
    from lm_eval.tasks.chartqa.utils import RelaxedCorrectness

    return RelaxedCorrectness().score(predictions[0].strip(), references[0])


def rows(seed: int = SEED, items: int = ITEMS) -> list[dict[str, Any]]:
    """The suite's items: each asks for the value of one bar, every position equally often."""
    from shadowft.zoo.pictures import BACKGROUNDS, BAR_POSITIONS, bars_row

    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(items):
        chart = bars_row(rng, BACKGROUNDS[i % len(BACKGROUNDS)])
        k = i % len(BAR_POSITIONS)
        out.append(
            {
                "id": f"chart-{i}",
                "question": QUESTION.format(position=BAR_POSITIONS[k]),
                "answer": str(chart["values"][k]),
                **chart,
            }
        )
    return out


def write_data(path: Path) -> int:
    """Write the suite's rows as JSON lines. -> the number of rows"""
    items = rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return len(items)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "toy_chart.jsonl"
    print(f"wrote {write_data(target)} rows to {target}")
