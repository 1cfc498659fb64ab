"""`extract_delta`: store the Base model's update, tuned - base, to graft later (or elsewhere)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from shadowft import __version__
from shadowft.checkpoint import Checkpoint, OutTensor, ShardedWriter
from shadowft.errors import PairError, ShadowFTError
from shadowft.graft.api import check_out, publish_out
from shadowft.graft.engine import Buffers, Progress, Stream
from shadowft.graft.provenance import write_provenance
from shadowft.graft.sources import PathLike, check_inputs_exist, difference_chunks
from shadowft.graft.validate import check_same_dtypes
from shadowft.pair import Structure


@dataclass
class DeltaReport:
    out: str
    tensors: int
    dtype: str
    bytes_written: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def extract_delta(
    base: PathLike,
    tuned: PathLike,
    out: PathLike,
    *,
    dtype: Literal["float32", "bfloat16"] = "float32",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DeltaReport:
    """Write delta = tuned - base (float32 arithmetic) for every floating tensor, as safetensors.

    float32 keeps small updates exact; bfloat16 halves the size but rounds updates that are
    tiny relative to the weights (the reason the paper's bf16 reference code loses precision).
    """
    t0 = time.perf_counter()
    out = Path(out)
    check_inputs_exist(base=base, tuned=tuned)
    check_out(out, [base, tuned], overwrite)
    store = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if store is None:
        raise ShadowFTError(f"delta dtype must be float32 or bfloat16, got {dtype!r}")
    with Checkpoint(base, role="base") as cb, Checkpoint(tuned, role="tuned") as ct:
        names = [n for n, t in ct.tensors.items() if t.dtype.is_floating_point]
        missing = [n for n in names if n not in cb.tensors]
        check_same_dtypes(cb, ct, names)  # else tuned - base holds rounding noise
        bad = [n for n in names if n in cb.tensors and cb.tensors[n].shape != ct.tensors[n].shape]
        if missing or bad:
            detail = [f"{n} missing in base" for n in missing[:4]] + [
                f"{n}: base {list(cb.tensors[n].shape)} vs tuned {list(ct.tensors[n].shape)}" for n in bad[:4]
            ]
            raise PairError(
                "--tuned is not a fine-tune of --base:\n  - " + "\n  - ".join(detail),
                hint="pass the Base model the tuned model started from",
            )
        plan = [OutTensor(n, store, ct.tensors[n].shape) for n in names]
        meta = {"shadowft": "delta", "shadowft_version": __version__}
        with Buffers() as bufs, publish_out(out, overwrite) as tmp:
            writer = ShardedWriter(tmp, plan, max_shard_size=max_shard_size, metadata=meta)
            for i, shard in enumerate(writer.shards):
                with writer.open_shard(i):
                    for t in shard:
                        b, tt = Stream(cb, t.name, bufs, "base"), Stream(ct, t.name, bufs, "tuned")
                        for _, _, w in difference_chunks(t.name, tt.numel(), tt, b, "update (tuned - base)", bufs):
                            writer.write(t.name, w)
                        if progress:
                            progress(t.name, t.nbytes)
            writer.write_index()
            report = DeltaReport(
                out=str(out),
                tensors=len(plan),
                dtype=dtype,
                bytes_written=sum(t.nbytes for t in plan),
                seconds=round(time.perf_counter() - t0, 3),
            )
            # The Base's structure travels with the delta: grafting it later onto another Instruct
            # checks that Instruct against it (and its fingerprint, in `inputs`, identifies the Base).
            record = {"base_config": cb.config, "base_structure": Structure.of(cb).to_dict(), **report.to_dict()}
            write_provenance(tmp, "delta", {"base": Path(base), "tuned": Path(tuned)}, record)
    return report
