"""`graft`: Instruct + update, streamed into a complete HF model dir.

The steps are separate: arguments and method settings are checked, the update source is opened
and validated against Instruct, the plan says what happens to every tensor, the engine writes the
shards, and the provenance is written once, from the report.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadowft.checkpoint import Checkpoint, OutTensor, ShardedWriter, copy_model_side_files
from shadowft.files import atomic_output_dir, check_output_dir, refuse_overlap
from shadowft.graft.engine import Progress, one_compute_thread, write_model
from shadowft.graft.plan import make_plan
from shadowft.graft.provenance import PROVENANCE_NAME, write_provenance
from shadowft.graft.registry import check_source, make_method, resolve_method_name
from shadowft.graft.sources import PathLike, check_inputs_exist, check_one_source, open_source, validate_graft
from shadowft.graft.validate import VocabPolicy
from shadowft.pair import PairOptions
from shadowft.scope import scope_for

_CHECK = PairOptions()  # the default: check sigma against 0.15, hints name the CLI's options


@dataclass
class GraftReport:
    """What a graft did (also written, with input fingerprints, as the provenance record)."""

    out: str
    method: str  # the update source: base-tuned | delta | lora (the name predates graft methods)
    alpha: float
    scope: str
    grafted: int
    copied: int
    in_scope_without_update: int
    warnings: list[str]
    bytes_read: int
    bytes_written: int
    seconds: float
    graft_method: str = "linear"  # how the update was combined (see shadowft.graft.registry)
    method_settings: dict[str, Any] = field(default_factory=dict)
    formula: str = ""  # what was added to Instruct: W = W_instruct + <formula> (the method's `describe`)
    pair_check: dict[str, Any] = field(default_factory=dict)  # see shadowft.graft.guard.PairCheck

    def to_dict(self) -> dict:
        return asdict(self)


def check_out(out: Path, inputs: list[PathLike | None], overwrite: bool) -> None:
    """The checks on a weight-surgery `--out`, before any expensive work: no input overlaps it, and a
    non-empty one is replaced only with `overwrite` and only when it holds a provenance record (an
    earlier output of graft, delta, adapter or convert), never an arbitrary folder."""
    refuse_overlap(out, inputs)
    check_output_dir(out, overwrite, marker=PROVENANCE_NAME)


def publish_out(out: Path, overwrite: bool) -> Any:
    """The temp dir a weight-surgery output is written in, published by a rename that never replaces
    an output another process published meanwhile (and with `overwrite`, only a provenance-marked one)."""
    return atomic_output_dir(out, overwrite=overwrite, marker=PROVENANCE_NAME)


def graft(
    instruct: PathLike,
    out: PathLike,
    *,
    delta: PathLike | None = None,
    base: PathLike | None = None,
    tuned: PathLike | None = None,
    adapter: PathLike | None = None,
    alpha: float = 1.0,
    scope: str = "projections",
    method: str | None = None,
    settings: Mapping[str, Any] | None = None,
    max_shard_size: str | int = "5GB",
    vocab_mismatch: VocabPolicy = "error",
    overwrite: bool = False,
    progress: Progress | None = None,
    pair_options: PairOptions | None = _CHECK,
) -> GraftReport:
    """Write Instruct + alpha * update to `out` as a complete HF model dir.

    The update is one of: a delta dir (`extract_delta`), a (base, tuned) pair, or a LoRA
    adapter trained on Base. `method` names how it is combined (`shadowft.graft.registry`;
    default `linear`) and `settings` are the method's own (e.g. per_module's
    ``{"alpha_by_module": {regex: alpha}}``, dare's ``{"density": 0.5, "seed": 0}``). Tensors outside
    `scope` are copied bit-exactly from Instruct; the arithmetic is float32, stored in Instruct's dtype.

    Before anything is written, the update's Base is compared with Instruct (`guard.py`):
    structure always, and sigma against `pair_options.max_sigma` where the Base weights are at
    hand. `pair_options=None` skips sigma, for callers that have run the pair check themselves.
    """
    t0 = time.perf_counter()
    check_one_source(delta=delta, base=base, tuned=tuned, adapter=adapter)
    check_inputs_exist(instruct=instruct)  # a symlink loop is an error, not a traceback in resolve()
    combine = make_method(resolve_method_name(method), alpha, settings)
    pattern = scope_for(scope, instruct)  # a VLM: `projections` are the language model's
    out = Path(out)
    check_out(out, [instruct, delta, base, tuned, adapter], overwrite)

    with Checkpoint(instruct, role="instruct") as ci:
        source = open_source(delta=delta, base=base, tuned=tuned, adapter=adapter)
        try:
            check_source(combine, source.kind)
            validate_graft(ci, source, pattern, vocab_mismatch)
            with one_compute_thread():  # sampled sigma: small ops, slowed by idle intra-op threads
                pair_check = source.check_pair(ci, scope, pair_options, vocab_mismatch)
            plan = make_plan(ci, source, pattern, scope, vocab_mismatch)
            layout = [OutTensor(n, i.dtype, i.shape) for n, i in ci.tensors.items()]
            with publish_out(out, overwrite) as tmp:
                writer = ShardedWriter(tmp, layout, max_shard_size=max_shard_size)
                bytes_read = write_model(writer, ci, plan.updates, combine, progress)
                writer.write_index()
                copy_model_side_files(Path(instruct), tmp)
                grafted = plan.grafted
                report = GraftReport(
                    out=str(out),
                    method=source.kind,
                    alpha=alpha,
                    scope=scope,
                    grafted=len(grafted),
                    copied=len(layout) - len(grafted),
                    in_scope_without_update=plan.in_scope_without_update,
                    warnings=pair_check.warnings + plan.warnings + combine.check(grafted),
                    bytes_read=bytes_read,
                    bytes_written=sum(t.nbytes for t in layout),
                    seconds=round(time.perf_counter() - t0, 3),
                    graft_method=combine.name,
                    method_settings=combine.settings(),
                    formula=combine.describe(),
                    pair_check=pair_check.to_dict(),
                )
                write_provenance(tmp, "graft", {"instruct": Path(instruct), **source.inputs()}, report.to_dict())
        finally:
            source.close()
    return report
