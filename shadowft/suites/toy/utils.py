"""Helpers referenced by the toy suites' YAML (`!function utils.NAME`)."""

from __future__ import annotations


def strip_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: compare the stripped generation with the answer (exact match)."""
    return [[r.strip() for r in resp] for resp in resps]


def format_results(doc: dict, results: list[str]) -> dict[str, float]:
    """toy-format: did the reply follow the bracket format, and was it exactly the bracketed answer."""
    reply = results[0]
    while isinstance(reply, list):  # a filtered response arrives as a one-element list
        reply = reply[0]
    reply = reply.strip()
    followed = len(reply) > 2 and reply.startswith("[") and reply.endswith("]")
    return {"format": float(followed), "exact_match": float(reply == doc["answer"].strip())}


def tool_results(doc: dict, results: list[str]) -> dict[str, float]:
    """toy-tools: the first call in the reply, parsed as JSON, against the expected call (name and arguments)."""
    from shadowft.zoo.tools import score_call

    reply = results[0]
    while isinstance(reply, list):
        reply = reply[0]
    return score_call(reply, doc["answer"])
