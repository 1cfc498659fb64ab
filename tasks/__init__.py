"""Prefect tasks: one per stage, each a thin wrapper over `shadowft.stages` (cache key, UI artifacts)."""
