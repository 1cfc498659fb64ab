"""Weight surgery: extract the Base model's update and graft it onto the Instruct model.

    W_new = W_instruct + alpha * (W_base_tuned - W_base)          (full fine-tuning)
    W_new = W_instruct + alpha * scale * B @ A                    (a LoRA adapter trained on Base)

Two things vary independently: the *update source* (`sources.py`: a Base/tuned pair, a stored
delta, a LoRA adapter) and the *graft method* (`methods/`, by name in `registry.py`: `linear`,
`per_module`). Both run on one streaming engine (`engine.py`): tensor by tensor over
memory-mapped safetensors, float32 arithmetic on fixed-size chunks, output planned into shards
and published only when complete. Validation (`validate.py`) runs before planning (`plan.py`),
and the provenance record is written once (`provenance.py`).
"""

from shadowft.graft.adapter import retarget_adapter
from shadowft.graft.api import GraftReport, graft
from shadowft.graft.delta import DeltaReport, extract_delta
from shadowft.graft.engine import CHUNK, DivergedError
from shadowft.graft.lora import LoraAdapter, LoraModule
from shadowft.graft.provenance import PROVENANCE_NAME
from shadowft.graft.registry import METHODS, get_method, make_method, method_names
from shadowft.graft.validate import VocabPolicy

__all__ = [
    "CHUNK",
    "METHODS",
    "PROVENANCE_NAME",
    "DeltaReport",
    "DivergedError",
    "GraftReport",
    "LoraAdapter",
    "LoraModule",
    "VocabPolicy",
    "extract_delta",
    "get_method",
    "graft",
    "make_method",
    "method_names",
    "retarget_adapter",
]
