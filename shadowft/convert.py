"""Convert pickled PyTorch weights to safetensors without executing pickled code.

shadowft itself reads safetensors only. Older checkpoints ship `pytorch_model*.bin`; this is the
one place that reads them, with `torch.load(weights_only=True)`, which refuses arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shadowft.checkpoint import OutTensor, ShardedWriter, copy_model_side_files
from shadowft.errors import CheckpointError
from shadowft.files import write_json_atomic
from shadowft.graft.api import check_out, publish_out
from shadowft.graft.provenance import PROVENANCE_NAME


def convert_pickled_to_safetensors(
    src: str | Path, out: str | Path, max_shard_size: str | int = "5GB", overwrite: bool = False
) -> int:
    """Write `src`'s .bin weights as safetensors in `out` (with its config and tokenizer)."""
    src, out = Path(src), Path(out)
    files = sorted(src.glob("*.bin")) if src.is_dir() else [src]
    if not files or not all(f.is_file() for f in files):
        raise CheckpointError(f"no pickled .bin weights found in {src}")
    check_out(out, [src], overwrite)  # --overwrite replaces only an earlier output, never an input
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # the unpickler refuses anything but tensors and plain containers
            raise CheckpointError(
                f"{f} could not be loaded safely with weights_only=True ({type(exc).__name__}: {exc})",
                hint="the file holds objects other than tensors; convert it in a trusted environment",
            ) from None
        state.update({k: v for k, v in part.items() if isinstance(v, torch.Tensor)})
    plan = [OutTensor(k, v.dtype, tuple(v.shape)) for k, v in state.items()]
    with publish_out(out, overwrite) as tmp:
        writer = ShardedWriter(tmp, plan, max_shard_size=max_shard_size)
        for i, shard in enumerate(writer.shards):
            with writer.open_shard(i):
                for t in shard:
                    writer.write(t.name, state[t.name].contiguous().reshape(-1))
        writer.write_index()
        copy_model_side_files(src if src.is_dir() else src.parent, tmp)
        write_json_atomic(
            tmp / PROVENANCE_NAME, {"made_by": "shadowft convert", "source": str(src), "tensors": len(plan)}
        )
    return len(plan)
