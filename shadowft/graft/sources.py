"""Where an update comes from: a Base/tuned pair, a stored delta, or a LoRA adapter.

A source opens its files, validates that it fits Instruct (`validate`), and tells the planner the
update of each in-scope Instruct tensor (`update_for`): how many elements it covers and a chunk
generator that fills the engine's float32 work buffer. It does no arithmetic with Instruct: that
is the graft method's job, so every source works with every method.
"""

from __future__ import annotations

import errno
import os
import re
from abc import ABC, abstractmethod
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch

from shadowft.checkpoint import Checkpoint, TensorInfo, read_json_object
from shadowft.errors import CheckpointError, PairError, ShadowFTError
from shadowft.fingerprint import fingerprint_path
from shadowft.graft.engine import Buffers, Stream, TensorUpdate, UpdateChunks, check_finite
from shadowft.graft.guard import PairCheck, check_base, check_structure, local_model_dir
from shadowft.graft.lora import LoraAdapter, LoraModule
from shadowft.graft.provenance import PROVENANCE_NAME
from shadowft.graft.validate import (
    VocabPolicy,
    check_full_update,
    check_pair_shapes,
    check_same_architecture,
    check_same_dtypes,
    covered_elements,
)
from shadowft.pair import PairOptions, Structure
from shadowft.scope import scope_name

PathLike = str | Path


class UpdateSource(ABC):
    """The update grafted onto Instruct, read lazily from its files."""

    #: Recorded as the report's `method` (a name older than graft methods): base-tuned | delta | lora.
    kind: ClassVar[str]
    #: A full update carries every tensor, so an in-scope tensor without one is worth a warning.
    carries_every_tensor: ClassVar[bool] = True

    @abstractmethod
    def checkpoints(self) -> list[Checkpoint]:
        """The model checkpoints whose architecture must match Instruct's."""

    @abstractmethod
    def inputs(self) -> dict[str, Path]:
        """Input dirs by role, for the provenance record."""

    @abstractmethod
    def validate(self, instruct: Checkpoint, pattern: re.Pattern[str], policy: VocabPolicy) -> None:
        """Raise PairError when the update does not fit `instruct` within scope `pattern`."""

    @abstractmethod
    def update_for(self, name: str, info: TensorInfo, policy: VocabPolicy, warnings: list[str]) -> TensorUpdate | None:
        """The update of in-scope Instruct tensor `name` (None: copy it); only after `validate`."""

    @abstractmethod
    def has_update(self, name: str) -> bool:
        """Whether the update changes Instruct tensor `name` (what `update_for` gives an update for)."""

    @abstractmethod
    def check_pair(
        self, instruct: Checkpoint, scope: str, options: PairOptions | None, policy: VocabPolicy = "error"
    ) -> PairCheck:
        """Compare the Base this update was taken from with `instruct` (raise PairError when they are
        not a pair); sigma only when `options` is given (None: the caller has checked the pair)."""

    def plan_warnings(self, pattern: re.Pattern[str], scope: str) -> list[str]:
        return []

    @abstractmethod
    def close(self) -> None: ...


def difference_chunks(name: str, n: int, tuned: Stream, base: Stream | None, what: str, bufs: Buffers) -> UpdateChunks:
    """float32 `tuned - base` (or `tuned` alone) over elements [0, n), chunk by chunk."""
    for s in range(0, n, bufs.chunk):
        e = min(n, s + bufs.chunk)
        w = bufs.get(e - s)
        w.copy_(tuned.chunk(s, e))
        if base is not None:
            w.sub_(base.float_chunk(s, e))  # float32 operands: no temporary per chunk
        check_finite(w, name, what)
        yield s, e, w


class PairSource(UpdateSource):
    """update = W_tuned - W_base, computed on the fly from the two model dirs."""

    kind = "base-tuned"

    def __init__(self, base: PathLike, tuned: PathLike) -> None:
        self.paths = {"base": Path(base), "tuned": Path(tuned)}
        self.base = Checkpoint(base, role="base")
        try:
            self.tuned = Checkpoint(tuned, role="tuned")
        except BaseException:
            self.base.close()
            raise

    def checkpoints(self) -> list[Checkpoint]:
        return [self.base, self.tuned]

    def inputs(self) -> dict[str, Path]:
        return dict(self.paths)

    def check_pair(
        self, instruct: Checkpoint, scope: str, options: PairOptions | None, policy: VocabPolicy = "error"
    ) -> PairCheck:
        return check_base(self.base, instruct, scope, options, policy=policy)

    def validate(self, instruct: Checkpoint, pattern: re.Pattern[str], policy: VocabPolicy) -> None:
        check_pair_shapes(self.base, self.tuned, instruct, pattern)
        check_full_update(instruct, self.tuned, pattern, policy)
        check_same_dtypes(self.base, self.tuned, [n for n in instruct.tensors if pattern.search(n)])

    def has_update(self, name: str) -> bool:
        return name in self.tuned.tensors

    def update_for(self, name: str, info: TensorInfo, policy: VocabPolicy, warnings: list[str]) -> TensorUpdate | None:
        if name not in self.tuned.tensors:
            return None
        n, warning = covered_elements(name, info, self.tuned.tensors[name].shape, policy)
        warnings += [warning] if warning else []

        def chunks(bufs: Buffers) -> UpdateChunks:
            base, tuned = Stream(self.base, name, bufs, "base"), Stream(self.tuned, name, bufs, "tuned")
            return difference_chunks(name, n, tuned, base, "update (tuned - base)", bufs)

        nbytes = self.base.tensors[name].nbytes + self.tuned.tensors[name].nbytes
        return TensorUpdate(n=n, scale=1.0, chunks=chunks, bytes_read=nbytes)

    def close(self) -> None:
        self.base.close()
        self.tuned.close()


class DeltaSource(UpdateSource):
    """update = a stored delta (`extract_delta`): its provenance carries the Base config."""

    kind = "delta"

    def __init__(self, delta: PathLike, base: PathLike | None = None) -> None:
        self.path = Path(delta)
        self.base = Path(base) if base is not None else None
        self.delta = Checkpoint(delta, role="delta")
        self.record: dict = {}
        prov = self.path / PROVENANCE_NAME
        if prov.is_file():
            try:
                self.record = _checked_record(read_json_object(prov, "delta provenance"), prov)
            except BaseException:
                self.delta.close()
                raise
            self.delta.config = self.record.get("base_config") or {}

    def checkpoints(self) -> list[Checkpoint]:
        return [self.delta]

    def inputs(self) -> dict[str, Path]:
        return {"delta": self.path, **({"base": self.base} if self.base is not None else {})}

    def check_pair(
        self, instruct: Checkpoint, scope: str, options: PairOptions | None, policy: VocabPolicy = "error"
    ) -> PairCheck:
        """The recorded Base structure against Instruct; sigma with `--base` (which must be the
        recorded Base: same fingerprint) or with the recorded Base dir when it is still unchanged."""
        recorded = self.record.get("base_structure")
        warnings: list[str] = []
        if recorded:
            warnings = check_structure(Structure.from_dict(recorded), instruct, scope, "base", policy)
        else:
            warnings.append(
                f"delta {self.path} does not record its Base's structure (made by an older shadowft): "
                "only tensor shapes could be checked against instruct"
            )
        rec_base = (self.record.get("inputs") or {}).get("base") or {}
        base = self.base
        if base is not None and rec_base.get("fingerprint") and fingerprint_path(base) != rec_base["fingerprint"]:
            raise PairError(
                f"--base {base} is not the Base this delta was taken from ({rec_base.get('path')}: other content)",
                hint="pass the Base model the delta was extracted from, or leave --base out",
            )
        if base is None and options is not None:
            found = local_model_dir(rec_base.get("path"))
            if found is not None and fingerprint_path(found) == rec_base.get("fingerprint"):
                base = found
        if base is None or options is None:
            if options is not None:
                warnings.append(
                    "only the structure was checked: the delta's Base is not at hand "
                    "(pass --base BASE to also check sigma(base, instruct))"
                )
            return PairCheck("structure" if recorded else "shapes", rec_base.get("path"), warnings=warnings)
        with Checkpoint(base, role="base") as cb:
            result = check_base(cb, instruct, scope, options, policy=policy)
        result.warnings = warnings + result.warnings
        return result

    def validate(self, instruct: Checkpoint, pattern: re.Pattern[str], policy: VocabPolicy) -> None:
        check_full_update(instruct, self.delta, pattern, policy)

    def has_update(self, name: str) -> bool:
        return name in self.delta.tensors

    def update_for(self, name: str, info: TensorInfo, policy: VocabPolicy, warnings: list[str]) -> TensorUpdate | None:
        if name not in self.delta.tensors:
            return None
        n, warning = covered_elements(name, info, self.delta.tensors[name].shape, policy)
        warnings += [warning] if warning else []

        def chunks(bufs: Buffers) -> UpdateChunks:
            return difference_chunks(name, n, Stream(self.delta, name, bufs, "delta"), None, "delta", bufs)

        return TensorUpdate(n=n, scale=1.0, chunks=chunks, bytes_read=self.delta.tensors[name].nbytes)

    def close(self) -> None:
        self.delta.close()


class LoraSource(UpdateSource):
    """update = B @ A (transposed for fan_in_fan_out) per adapted layer, scale alpha / r."""

    kind = "lora"
    carries_every_tensor = False

    def __init__(self, adapter: PathLike) -> None:
        self.path = Path(adapter)
        self.adapter = LoraAdapter(adapter)
        self.biases = {m.target[: -len("weight")] + "bias": m for m in self.adapter.modules.values() if m.bias}

    def checkpoints(self) -> list[Checkpoint]:
        return []  # an adapter has no model config; `check_fits` compares every target's shape

    def inputs(self) -> dict[str, Path]:
        return {"adapter": self.path}

    def check_pair(
        self, instruct: Checkpoint, scope: str, options: PairOptions | None, policy: VocabPolicy = "error"
    ) -> PairCheck:
        """The adapter's recorded base (`base_model_name_or_path`) against Instruct, when it is a
        local model dir; otherwise only the adapter's shapes can be checked (in `validate`)."""
        ref = self.adapter.config.get("base_model_name_or_path")
        found = local_model_dir(ref)
        if found is None:
            return PairCheck(
                "shapes",
                ref,
                warnings=[
                    f"the adapter's base model {ref!r} is not a local model dir: only the adapter's shapes "
                    "could be checked against instruct, not that instruct is its Base's twin"
                ],
            )
        if found.resolve() == Path(instruct.path).resolve():
            return PairCheck("structure+sigma", str(found), sigma=0.0)  # merged into the model it was trained on
        with Checkpoint(found, role="adapter base") as cb:
            return check_base(cb, instruct, scope, options, label="adapter base", policy=policy)

    def validate(self, instruct: Checkpoint, pattern: re.Pattern[str], policy: VocabPolicy) -> None:
        self.adapter.spell_as(instruct)
        self.biases = {m.target[: -len("weight")] + "bias": m for m in self.adapter.modules.values() if m.bias}
        self.adapter.check_fits(instruct)
        missing_bias = [b for b in self.biases if b not in instruct.tensors]
        if missing_bias:
            raise PairError(f"adapter trains biases that instruct lacks: {', '.join(missing_bias[:3])}")

    def has_update(self, name: str) -> bool:
        return name in self.adapter.modules or name in self.biases

    def plan_warnings(self, pattern: re.Pattern[str], scope: str) -> list[str]:
        skipped = [t for t in self.adapter.modules if not pattern.search(t)]
        return [f"{len(skipped)} adapter module(s) are outside scope {scope!r} and were not applied"] if skipped else []

    def update_for(self, name: str, info: TensorInfo, policy: VocabPolicy, warnings: list[str]) -> TensorUpdate | None:
        ckpt = self.adapter.ckpt
        module = self.adapter.modules.get(name)
        if module is not None:
            nbytes = ckpt.tensors[module.a].nbytes + ckpt.tensors[module.b].nbytes
            return TensorUpdate(
                n=info.numel, scale=module.scale, chunks=partial(self._product, module, info), bytes_read=nbytes
            )
        owner = self.biases.get(name)
        if owner is not None and owner.bias is not None:
            bias_name = owner.bias

            def chunks(bufs: Buffers) -> UpdateChunks:
                bias = Stream(ckpt, bias_name, bufs, "delta")
                return difference_chunks(name, info.numel, bias, None, "adapter", bufs)

            return TensorUpdate(
                n=info.numel, scale=owner.scale, chunks=chunks, bytes_read=ckpt.tensors[bias_name].nbytes
            )
        return None

    def _product(self, m: LoraModule, info: TensorInfo, bufs: Buffers) -> UpdateChunks:
        """B @ A in row blocks of about one work buffer, each [rows, cols] of the target's shape."""
        a, b = self.adapter.ckpt.tensor(m.a), self.adapter.ckpt.tensor(m.b)
        rows, cols = info.shape
        left = (a.float().t() if m.fan_in_fan_out else b.float()).contiguous()  # [rows, r]
        right = (b.float().t() if m.fan_in_fan_out else a.float()).contiguous()  # [r, cols]
        check_finite(left, info.name, "adapter")
        check_finite(right, info.name, "adapter")
        step = max(1, bufs.chunk // max(cols, 1))
        for s in range(0, rows, step):
            e = min(rows, s + step)
            w = bufs.get((e - s) * cols).view(e - s, cols)
            torch.matmul(left[s:e], right, out=w)
            yield s * cols, e * cols, w

    def close(self) -> None:
        self.adapter.close()


def _checked_record(record: dict, path: Path) -> dict:
    """A delta's provenance record, with the fields the graft reads of the types it reads them as."""
    kinds = {"base_config": dict, "base_structure": dict, "inputs": dict}
    bad = [k for k, t in kinds.items() if record.get(k) is not None and not isinstance(record[k], t)]
    structure = record.get("base_structure") or {}
    if not bad and structure:
        config, tensors = structure.get("config", {}), structure.get("tensors", {})
        if not isinstance(config, dict) or not isinstance(tensors, dict):
            bad.append("base_structure")
        elif not all(isinstance(s, list) and all(isinstance(d, int) for d in s) for s in tensors.values()):
            bad.append("base_structure.tensors")
    base = None if bad else (record.get("inputs") or {}).get("base")
    if base is not None and not isinstance(base, dict):
        bad.append("inputs.base")
    if bad:
        raise CheckpointError(
            f"the delta's provenance {path} is malformed (field {bad[0]} has the wrong type)",
            hint="the delta dir was edited or is corrupt; extract the delta again with `shadowft delta`",
        )
    return record


def check_inputs_exist(**paths: PathLike | None) -> None:
    """Refuse an input path that is missing or a symlink loop, naming its role (before any path
    is resolved: resolving a loop raises a bare RuntimeError)."""
    for role, p in paths.items():
        if p is None:
            continue
        try:
            os.stat(p)
        except OSError as exc:
            what = "is a symlink loop" if exc.errno == errno.ELOOP else "does not exist"
            if exc.errno not in (errno.ELOOP, errno.ENOENT):
                what = f"cannot be read ({exc.strerror})"
            raise CheckpointError(
                f"{role} {p} {what}",
                hint="pass a local model directory (hub ids must be downloaded first, e.g. `huggingface-cli download`)",
            ) from None


def check_one_source(
    *, delta: PathLike | None, base: PathLike | None, tuned: PathLike | None, adapter: PathLike | None
) -> None:
    """Refuse no update, several, or half a pair (before any file is opened)."""
    given = [x is not None for x in (delta, adapter)] + [tuned is not None]
    if sum(given) != 1 or (tuned is not None and base is None) or (adapter is not None and base is not None):
        raise ShadowFTError(
            "give exactly one update: --delta DIR (with --base DIR to check sigma), or --base DIR with --tuned DIR, "
            "or --adapter DIR"
        )
    check_inputs_exist(delta=delta, base=base, tuned=tuned, adapter=adapter)


def open_source(
    *,
    delta: PathLike | None = None,
    base: PathLike | None = None,
    tuned: PathLike | None = None,
    adapter: PathLike | None = None,
) -> UpdateSource:
    """Open the one update given: a delta dir, a (base, tuned) pair, or a LoRA adapter."""
    check_one_source(delta=delta, base=base, tuned=tuned, adapter=adapter)
    if delta is not None:
        return DeltaSource(delta, base)
    if adapter is not None:
        return LoraSource(adapter)
    return PairSource(base, tuned)  # type: ignore[arg-type]


def validate_graft(instruct: Checkpoint, source: UpdateSource, pattern: re.Pattern[str], policy: VocabPolicy) -> None:
    """Refuse an update from another architecture, one that does not fit Instruct's tensors, or a
    scope under which nothing would be grafted."""
    check_same_architecture(instruct, source.checkpoints())
    source.validate(instruct, pattern, policy)
    check_scope_selects(instruct, source, pattern)


def check_scope_selects(instruct: Checkpoint, source: UpdateSource, pattern: re.Pattern[str]) -> None:
    """Refuse a graft that would change nothing: a scope that selects no floating-point tensor of
    Instruct (a typo in `--scope` otherwise writes a copy of Instruct with exit 0), or one whose
    selected tensors the update does not touch."""
    scope = scope_name(pattern)
    selected = [n for n, i in instruct.tensors.items() if pattern.search(n) and i.dtype.is_floating_point]
    if not selected:
        raise PairError(
            f"the graft scope {scope!r} selects no tensor of instruct {instruct.path}, so nothing would be grafted",
            hint="check --scope against the tensor names (e.g. `projections`, `all`, or a regex like 'mlp\\.'); "
            f"instruct's tensors are named like {', '.join(list(instruct.tensors)[:2])}",
        )
    if not any(source.has_update(n) for n in selected):
        raise PairError(
            f"the update ({source.kind}) changes none of the {len(selected)} tensor(s) that scope {scope!r} selects, "
            "so nothing would be grafted",
            hint="widen --scope to the tensors the update changes (for a LoRA adapter, its target modules)",
        )
