"""Helpers of the own-data task (`!function utils.NAME`), copied beside its YAML."""

from __future__ import annotations


def strip_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: the reply without surrounding whitespace."""
    return [[r.strip() for r in resp] for resp in resps]


def chrf(references: list[str], predictions: list[str], **kwargs) -> float:
    """sacrebleu's sentence chrF of the reply against the reference, in [0, 1]."""
    import sacrebleu

    prediction = predictions[0]
    while isinstance(prediction, list):  # a filtered response may arrive as a one-element list
        prediction = prediction[0]
    return sacrebleu.sentence_chrf(str(prediction), [str(references[0])]).score / 100.0


def images(doc: dict) -> list:
    """doc_to_image: the row's pictures, PNG files named relative to this folder."""
    from pathlib import Path

    from PIL import Image

    here = Path(__file__).resolve().parent
    out = []
    for name in doc.get("images") or []:
        with Image.open(here / name) as image:
            out.append(image.convert("RGB"))
    return out
