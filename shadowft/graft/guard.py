"""The pair check on every graft path, before anything is written.

Whatever the update source, grafting onto a model that is not the Instruct twin of the update's
Base silently produces garbage of the right shape. So each source compares the Base it came from
with Instruct: structure always (a delta records its Base's structure), and the paper's sigma
whenever the Base weights are at hand (the Base/tuned pair, a delta's `--base` or its recorded Base
dir, a LoRA adapter's `base_model_name_or_path` when it is a local dir).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from shadowft.checkpoint import Checkpoint
from shadowft.errors import PairError
from shadowft.graft.validate import VocabPolicy
from shadowft.modality import checkpoint_parts
from shadowft.pair import PairOptions, Structure, sigma_verdict, similarity, structure_problems
from shadowft.scope import language_model_prefixes

#: Elements per tensor on which the graft's guard measures sigma (16 runs of 4096). On the
#: benchmark's 1.3B trio the full sigma took 3-4x the graft itself; sampled, a small fraction.
GUARD_SAMPLE = 1 << 16


@dataclass
class PairCheck:
    """What the graft checked about (update's Base, Instruct), recorded in its report (no timing:
    the provenance of a re-run is identical; `benchmarks/graft.py` times the check)."""

    checked: str = "skipped"  # structure+sigma | structure | shapes | skipped (the caller checked the pair)
    base: str | None = None  # the Base the update was taken from, where known
    sigma: float | None = None
    sigma_sample: int | None = None  # elements per tensor sigma was measured on (None: all)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def check_structure(
    base: Structure, instruct: Checkpoint, scope: str, label: str, policy: VocabPolicy = "error"
) -> list[str]:
    """Raise PairError on an in-scope structural difference; -> warnings. Vocab rows that differ
    are left to the vocab policy (validated before, in `validate.py`)."""
    errors, warnings = structure_problems(
        base,
        Structure.of(instruct),
        scope,
        base_name=label,
        vocab_rows_ok=policy == "overlap",
        language_model=language_model_prefixes(instruct.path),
    )
    if errors:
        raise PairError(
            f"the update's {label} and instruct are not the same model structure:\n  - " + "\n  - ".join(errors[:12]),
            hint="graft onto the Instruct model paired with the Base the update was trained from",
        )
    return warnings


def check_base(
    base: Checkpoint,
    instruct: Checkpoint,
    scope: str,
    options: PairOptions | None,
    label: str = "base",
    policy: VocabPolicy = "error",
) -> PairCheck:
    """Structure, then (unless `options` is None) sigma(base, instruct) against options.max_sigma."""
    result = PairCheck("structure", str(base.path))
    result.warnings = check_structure(Structure.of(base), instruct, scope, label, policy)
    if options is not None:
        parts = checkpoint_parts(instruct.path)  # a VLM: the verdict is the language model's sigma
        result.sigma = similarity(base, instruct, sample_elements=GUARD_SAMPLE, parts=parts).mean
        result.sigma_sample = GUARD_SAMPLE
        result.checked = "structure+sigma"
        msg = sigma_verdict(result.sigma, options, f"sigma({label}, instruct)")
        result.warnings += [msg] if msg else []
    return result


def local_model_dir(ref: str | None) -> Path | None:
    """`ref` as a local model dir with safetensors weights, else None (a hub id, a moved dir)."""
    if not ref:
        return None
    p = Path(ref).expanduser()
    if p.is_dir() and (any(p.glob("*.safetensors")) or (p / "model.safetensors.index.json").is_file()):
        return p
    return None
