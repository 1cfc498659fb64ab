"""Helpers referenced by the toy suites' YAML (`!function utils.NAME`)."""

from __future__ import annotations


def strip_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: compare the stripped generation with the answer (exact match)."""
    return [[r.strip() for r in resp] for resp in resps]
