"""Checks that an update fits Instruct, all run before the first byte is written.

Planning (`plan.py`) assumes these passed and never raises: every refusal of bad input lives here
or in the update source's `validate`, which calls the helpers below.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Literal

from shadowft.checkpoint import Checkpoint, TensorInfo
from shadowft.errors import PairError
from shadowft.pair import config_differences

if TYPE_CHECKING:
    from shadowft.graft.sources import UpdateSource

VocabPolicy = Literal["error", "overlap"]


def validate_graft(instruct: Checkpoint, source: UpdateSource, pattern: re.Pattern[str], policy: VocabPolicy) -> None:
    """Refuse an update from another architecture, or one that does not fit Instruct's tensors."""
    check_same_architecture(instruct, source.checkpoints())
    source.validate(instruct, pattern, policy)


def check_same_architecture(instruct: Checkpoint, others: list[Checkpoint]) -> None:
    for other in others:
        problems = config_differences(other.config, instruct.config, other.role, "instruct")
        if problems:
            raise PairError(
                f"{other.role} {other.path} is not the same architecture as instruct:\n  - " + "\n  - ".join(problems),
                hint="use the Base model this Instruct model was trained from",
            )


def check_full_update(instruct: Checkpoint, source: Checkpoint, pattern: re.Pattern[str], policy: VocabPolicy) -> None:
    """A full update (tuned model or delta): no separate lm_head onto tied embeddings, no tensors
    Instruct lacks, and every in-scope tensor of the right shape (or vocab rows per `policy`)."""
    lm_head = "lm_head.weight"
    if (
        instruct.tied_embeddings
        and lm_head not in instruct.tensors
        and lm_head in source.tensors
        and pattern.search(lm_head)
    ):
        raise PairError(
            "instruct ties lm_head to embed_tokens, but the update changes lm_head separately",
            hint="keep lm_head out of --scope (the default 'projections' does), or untie instruct's embeddings first",
        )
    unknown = [n for n in source.tensors if n not in instruct.tensors and pattern.search(n) and n != lm_head]
    if unknown:
        raise PairError(
            f"the update has {len(unknown)} tensor(s) in scope that instruct lacks, e.g. {', '.join(unknown[:3])}",
            hint="the update comes from another architecture; use the Base paired with this Instruct",
        )
    for name, info in instruct.tensors.items():
        if pattern.search(name) and info.dtype.is_floating_point and name in source.tensors:
            covered_elements(name, info, source.tensors[name].shape, policy)


def check_pair_shapes(base: Checkpoint, tuned: Checkpoint, instruct: Checkpoint, pattern: re.Pattern[str]) -> None:
    """Every in-scope tensor of the tuned model is in base, with the same shape."""
    for n, t in tuned.tensors.items():
        if pattern.search(n) and n in instruct.tensors:
            if n not in base.tensors:
                raise PairError(f"tensor {n} is in the tuned model but not in base", hint="check --base and --tuned")
            if base.tensors[n].shape != t.shape:
                raise PairError(
                    f"tensor {n} has shape {list(base.tensors[n].shape)} in base but {list(t.shape)} in tuned",
                    hint="--tuned must be a fine-tune of --base (vocab resizing is not supported)",
                )


def covered_elements(
    name: str, inst: TensorInfo, src_shape: tuple[int, ...], policy: VocabPolicy
) -> tuple[int, str | None]:
    """Elements of `inst` that an update of shape `src_shape` covers (from the start), and a
    warning when only the shared vocab rows are (policy 'overlap'); refuses other mismatches."""
    if tuple(src_shape) == tuple(inst.shape):
        return inst.numel, None
    same_tail = len(src_shape) == len(inst.shape) and tuple(src_shape[1:]) == tuple(inst.shape[1:])
    if same_tail and policy == "overlap":
        rows = min(src_shape[0], inst.shape[0])
        warning = (
            f"{name}: update has {src_shape[0]} rows, instruct {inst.shape[0]}; "
            f"grafted the first {rows} rows, kept instruct's others"
        )
        return rows * math.prod(inst.shape[1:]), warning
    if same_tail:
        raise PairError(
            f"{name} has {src_shape[0]} rows in the update but {inst.shape[0]} in instruct (vocab sizes differ)",
            hint="graft only the shared rows with --vocab-mismatch overlap, or keep embeddings out of --scope",
        )
    raise PairError(
        f"{name} has shape {list(src_shape)} in the update but {list(inst.shape)} in instruct",
        hint="the update comes from a model of another architecture or size; use the Base paired with this Instruct",
    )
