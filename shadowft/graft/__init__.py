"""Weight surgery: extract the Base model's update and graft it onto the Instruct model.

    W_new = W_instruct + alpha * (W_base_tuned - W_base)          (full fine-tuning)
    W_new = W_instruct + alpha * scale * B @ A                    (a LoRA adapter trained on Base)

Two things vary independently: the *update source* (`sources.py`: a Base/tuned pair, a stored
delta, a LoRA adapter) and the *graft method* (`methods/`, by name in `registry.py`: `linear`,
`per_module`, `dare`, `ties`). Both run on one streaming engine (`engine.py`): tensor by tensor over
memory-mapped safetensors, float32 arithmetic on fixed-size chunks, output planned into shards
and published only when complete. Validation (`validate.py`) runs before planning (`plan.py`),
and the provenance record is written once (`provenance.py`).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# re-exports, imported on first use: `shadowft.config` imports `shadowft.graft.registry`, which must
# not pull torch and the checkpoint code in with this package
_EXPORTS = {
    "retarget_adapter": "adapter",
    "GraftReport": "api",
    "graft": "api",
    "DeltaReport": "delta",
    "extract_delta": "delta",
    "CHUNK": "engine",
    "DivergedError": "engine",
    "LoraAdapter": "lora",
    "LoraModule": "lora",
    "PROVENANCE_NAME": "provenance",
    "METHODS": "registry",
    "get_method": "registry",
    "make_method": "registry",
    "method_names": "registry",
    "VocabPolicy": "validate",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
