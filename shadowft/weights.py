"""Compatibility alias: weight surgery lives in `shadowft.graft` (import from there)."""

from shadowft.graft import (  # noqa: F401
    PROVENANCE_NAME,
    DeltaReport,
    DivergedError,
    GraftReport,
    LoraAdapter,
    LoraModule,
    extract_delta,
    graft,
    retarget_adapter,
)
