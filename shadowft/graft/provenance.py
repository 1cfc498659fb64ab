"""The provenance record written beside every output of weight surgery (graft, delta, adapter)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shadowft import __version__
from shadowft.fingerprint import fingerprint_path

PROVENANCE_NAME = "shadowft_provenance.json"


def write_provenance(
    out_dir: Path, kind: str, inputs: Mapping[str, str | Path | None], record: Mapping[str, Any]
) -> dict[str, Any]:
    """Write `shadowft_provenance.json`: tool, version, time, what was made (`kind`), each input's
    path and content fingerprint, and `record` (the operation's report and settings)."""
    prov = {
        "tool": "shadowft",
        "version": __version__,
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {k: {"path": str(v), "fingerprint": fingerprint_path(v)} for k, v in inputs.items() if v is not None},
        **record,
    }
    (Path(out_dir) / PROVENANCE_NAME).write_text(json.dumps(prov, indent=2) + "\n")
    return prov
