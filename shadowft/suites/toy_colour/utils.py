"""toy-colour: an offline image suite for vision-language pairs (`!function utils.NAME` in the YAML).

Each row of `data/toy_colour.jsonl` describes one picture: a square in a shade of a named colour on a
light background (`rgb`, `background`, `box` = x0, y0, x1, y1 in a `size` x `size` px image). A shade
moves each channel of the colour by up to `SHADE` and stays nearer to its name than to any other of
the six colours, so every item has one right answer, yet none is the exact colour a model may have
been post-trained on (exact colours left the embedded family's Instruct at 100 %). Some shades look
like a neighbour to the eye (an olive green); the name nearest in RGB is the answer. The picture
is drawn from the row (`square_image`), so the images are deterministic, need no files and no hub,
and the request cache keys them by content (lm-eval hashes an image's PNG bytes). Regenerate the
data with `python shadowft/suites/toy_colour/utils.py` (it writes the same file every time).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

#: The colour names a reply is scored against, and the RGB each is drawn in.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 30),
    "orange": (245, 130, 20),
    "purple": (130, 40, 170),
}
BACKGROUNDS = ((255, 255, 255), (235, 235, 235), (250, 245, 230), (225, 235, 245))
QUESTION = "What colour is the square?"
SEED = 20261207
PER_COLOUR = 8
SIZE = 32
SHADE = 80  # at most this far from the named colour on each channel (0-255)


def square_image(doc: dict[str, Any]) -> list[Any]:
    """doc_to_image: the row's picture (one PIL image, RGB)."""
    from PIL import Image, ImageDraw

    size = int(doc["size"])
    image = Image.new("RGB", (size, size), tuple(doc["background"]))
    x0, y0, x1, y1 = doc["box"]
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), fill=tuple(doc["rgb"]))
    return [image]


def strip_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter `strict`: the stripped reply as it is (exact match with the colour name)."""
    return [[r.strip() for r in resp] for resp in resps]


def nearest_colour(rgb: list[int]) -> str:
    """The named colour closest to `rgb` (Euclidean in RGB)."""
    return min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], rgb, strict=True)))


def shade(rng: random.Random, name: str, spread: int = SHADE) -> list[int]:
    """A random shade of `name`: each channel moved by up to `spread`, redrawn until `name` is nearest."""
    while True:
        rgb = [max(0, min(255, v + rng.randint(-spread, spread))) for v in COLOURS[name]]
        if nearest_colour(rgb) == name:
            return rgb


def rows(seed: int = SEED, per_colour: int = PER_COLOUR, size: int = SIZE) -> list[dict[str, Any]]:
    """The suite's items: `per_colour` pictures of each colour (shade, size, place and background vary)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(per_colour):
        for name in COLOURS:
            side = rng.randint(size // 3, size * 3 // 4)
            x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
            out.append(
                {
                    "id": f"{name}-{i}",
                    "question": QUESTION,
                    "answer": name,
                    "rgb": shade(rng, name),
                    "background": list(BACKGROUNDS[(i + len(out)) % len(BACKGROUNDS)]),
                    "box": [x0, y0, x0 + side, y0 + side],
                    "size": size,
                }
            )
    return out


def write_data(path: Path) -> int:
    """Write the suite's rows as JSON lines. -> the number of rows"""
    items = rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return len(items)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "toy_colour.jsonl"
    print(f"wrote {write_data(target)} rows to {target}")
