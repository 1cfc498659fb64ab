"""`retarget_adapter`: the Base-trained LoRA adapter as one whose base model is Instruct."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shadowft.checkpoint import Checkpoint, OutTensor, ShardedWriter
from shadowft.graft.api import _CHECK, check_out, publish_out
from shadowft.graft.lora import LoraAdapter
from shadowft.graft.provenance import PROVENANCE_NAME, write_provenance
from shadowft.graft.sources import LoraSource, PathLike
from shadowft.pair import PairOptions


def retarget_adapter(
    adapter: PathLike,
    instruct: PathLike,
    out: PathLike,
    *,
    alpha: float = 1.0,
    overwrite: bool = False,
    pair_options: PairOptions | None = _CHECK,
) -> Path:
    """Write the Base-trained adapter as one whose base model is Instruct (for adapter serving).

    The adapter's update does not depend on the weights it is applied to, so only its
    `base_model_name_or_path` changes, after checking that it fits Instruct (its shapes, and its
    recorded base against Instruct as in `graft`); `alpha` != 1
    scales lora_B (and its bias) so that serving applies alpha * update.
    """
    out = Path(out)
    check_out(out, [adapter, instruct], overwrite)
    ad = LoraAdapter(adapter)
    try:
        with Checkpoint(instruct, role="instruct") as ci:
            ad.check_fits(ci)
            source = LoraSource(adapter)
            try:
                check = source.check_pair(ci, "all", pair_options)
            finally:
                source.close()
        with publish_out(out, overwrite) as tmp:
            for f in Path(adapter).iterdir():
                if (
                    f.is_file()
                    and f.name not in ("adapter_model.safetensors", PROVENANCE_NAME)
                    and not f.name.startswith(".")
                ):
                    shutil.copy2(f, tmp / f.name)
            cfg = dict(ad.config)
            cfg["base_model_name_or_path"] = str(Path(instruct).absolute())
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            plan = [OutTensor(n, i.dtype, i.shape) for n, i in ad.ckpt.tensors.items()]
            scaled = {m.b for m in ad.modules.values()} | {m.bias for m in ad.modules.values() if m.bias}
            writer = ShardedWriter(
                tmp, plan, max_shard_size=1 << 62, metadata={"shadowft": "adapter"}, prefix="adapter_model"
            )
            with writer.open_shard(0):
                for t in plan:
                    src = ad.ckpt.view(t.name)
                    writer.write(t.name, src.float() * alpha if t.name in scaled and alpha != 1.0 else src)
            write_provenance(
                tmp,
                "adapter",
                {"adapter": Path(adapter), "instruct": Path(instruct)},
                {"alpha": alpha, "pair_check": check.to_dict()},
            )
    finally:
        ad.close()
    return out
