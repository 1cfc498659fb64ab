"""Generated pictures for the vision-language toy suites and family: bar charts, dots, squares.

A picture is described by a small JSON row (what to draw, where, in which colours) and drawn from it
with Pillow's integer drawing primitives. The same row always gives the same pixels, on any machine,
so a suite ships rows rather than image files, lm-eval's request cache keys each image by its content,
and the family's training data is reproducible from its seed. (Pillow rather than matplotlib: these
are 48-pixel pictures, thousands of them for a family build, and Pillow draws one in about 50
microseconds with no anti-aliasing to vary between library versions.)

- bars: `values` (1-9) as bars of height value x `UNIT` px over a baseline, light grid lines every
  unit, so a value can be read off by its height; bars are left, middle, right.
- dots: `count` filled circles in cells of a 3 x 3 grid.
- square: one filled square.
"""

from __future__ import annotations

import random
from typing import Any

SIZE = 48
UNIT = 4  # px per unit of a bar's value
MAX_VALUE = 9
BAR_POSITIONS = ("left", "middle", "right")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 30),
    "orange": (245, 130, 20),
    "purple": (130, 40, 170),
}
BACKGROUNDS = ((255, 255, 255), (235, 235, 235), (250, 245, 230), (225, 235, 245))
GRID = (205, 205, 205)
AXIS = (60, 60, 60)


def draw(doc: dict[str, Any]) -> Any:
    """The picture a row describes (a PIL RGB image)."""
    from PIL import Image, ImageDraw

    size = int(doc.get("size", SIZE))
    image = Image.new("RGB", (size, size), tuple(doc.get("background", BACKGROUNDS[0])))
    pen = ImageDraw.Draw(image)
    kind = doc["kind"]
    if kind == "bars":
        _bars(pen, size, doc["values"], [tuple(c) for c in doc["colours"]])
    elif kind == "dots":
        for x0, y0, d in doc["dots"]:
            pen.ellipse((x0, y0, x0 + d - 1, y0 + d - 1), fill=tuple(doc["rgb"]))
    elif kind == "square":
        x0, y0, x1, y1 = doc["box"]
        pen.rectangle((x0, y0, x1 - 1, y1 - 1), fill=tuple(doc["rgb"]))
    else:
        raise ValueError(f"unknown picture kind {kind!r}")
    return image


def _bars(pen: Any, size: int, values: list[int], colours: list[tuple[int, int, int]]) -> None:
    base = size - 6  # the baseline's y
    for v in range(1, MAX_VALUE + 1):  # grid lines: one per unit, to read heights against
        pen.line((4, base - v * UNIT, size - 3, base - v * UNIT), fill=GRID)
    width = (size - 8) // (2 * len(values))
    for i, (value, colour) in enumerate(zip(values, colours, strict=True)):
        x0 = 6 + i * 2 * width + width // 2
        pen.rectangle((x0, base - value * UNIT, x0 + width - 1, base - 1), fill=colour)
    pen.line((4, base, size - 3, base), fill=AXIS)
    pen.line((4, base, 4, base - MAX_VALUE * UNIT - 1), fill=AXIS)


# -- rows: what each picture shows, drawn from a seeded generator ----------------------------------


def bars_row(rng: random.Random, background: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Three bars of distinct values 1-9, each its own colour."""
    values = rng.sample(range(1, MAX_VALUE + 1), 3)
    colours = [list(COLOURS[c]) for c in rng.sample(sorted(COLOURS), 3)]
    return {"kind": "bars", "values": values, "colours": colours, "background": list(background or BACKGROUNDS[0])}


def dots_row(rng: random.Random, count: int | None = None) -> dict[str, Any]:
    """1-5 dots of one colour, each in its own cell of a 3 x 3 grid, jittered inside it."""
    n = count if count is not None else rng.randint(1, 5)
    cell = SIZE // 3
    dots = []
    for c in sorted(rng.sample(range(9), n)):
        d = rng.randint(7, 10)
        dots.append([(c % 3) * cell + rng.randint(1, cell - d - 1), (c // 3) * cell + rng.randint(1, cell - d - 1), d])
    name = rng.choice(sorted(COLOURS))
    return {
        "kind": "dots",
        "dots": dots,
        "count": n,
        "rgb": list(COLOURS[name]),
        "background": list(rng.choice(BACKGROUNDS)),
    }


def square_row(rng: random.Random, name: str | None = None) -> dict[str, Any]:
    """One square of a named colour, of varied size and place."""
    name = name or rng.choice(sorted(COLOURS))
    side = rng.randint(SIZE // 3, SIZE * 3 // 4)
    x0, y0 = rng.randint(0, SIZE - side), rng.randint(0, SIZE - side)
    return {
        "kind": "square",
        "colour": name,
        "rgb": list(COLOURS[name]),
        "box": [x0, y0, x0 + side, y0 + side],
        "background": list(rng.choice(BACKGROUNDS)),
    }
