"""CLI commands for weight surgery: similarity, pair check, delta, graft (filled in below)."""

from __future__ import annotations
