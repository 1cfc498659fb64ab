"""Weight surgery: extract the Base model's update and graft it onto the Instruct model.

    W_new = W_instruct + alpha * (W_base_tuned - W_base)          (full fine-tuning)
    W_new = W_instruct + alpha * scale * B @ A                    (a LoRA adapter trained on Base)

Everything streams tensor by tensor over memory-mapped safetensors: the arithmetic runs in
float32 on fixed-size chunks and writes straight into the memory-mapped output shard, so
anonymous memory stays at a few chunk buffers whatever the model's size. The whole plan
(names, shapes, scope, dtypes, adapter fit) is validated before the first byte is written, and
the output appears only when complete (temporary dir, then rename).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import torch

from shadowft import __version__
from shadowft.checkpoint import (
    Checkpoint,
    OutTensor,
    ShardedWriter,
    TensorInfo,
    atomic_output_dir,
    check_output_dir,
    copy_model_side_files,
)
from shadowft.errors import CheckpointError, PairError, ShadowFTError
from shadowft.fingerprint import fingerprint_path
from shadowft.pair import config_differences
from shadowft.scope import compile_scope

# float32 elements per work buffer: 1 MB stays in the CPU's L2 cache, so each chunk's four passes
# (convert, subtract, add, store) touch main memory only to read the inputs and write the output.
CHUNK = 1 << 18
PROVENANCE_NAME = "shadowft_provenance.json"
VocabPolicy = Literal["error", "overlap"]
Progress = Callable[[str, int], None]  # (tensor name, bytes done for it)


class DivergedError(ShadowFTError):
    """The update holds NaN or Inf: the tuned model diverged."""


# --------------------------------------------------------------------------------------------
# Sources of an update
# --------------------------------------------------------------------------------------------
@dataclass
class LoraModule:
    """One adapted linear layer: W += alpha * scale * (B @ A), transposed for fan_in_fan_out."""

    target: str  # the weight tensor it updates, e.g. model.layers.0.self_attn.q_proj.weight
    a: str
    b: str
    scale: float
    fan_in_fan_out: bool
    bias: str | None = None


class LoraAdapter:
    """A PEFT LoRA adapter dir (adapter_config.json + adapter_model.safetensors), read lazily."""

    PREFIX = "base_model.model."

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        cfg_file = self.path / "adapter_config.json"
        if not cfg_file.is_file():
            raise CheckpointError(
                f"{self.path} is not a PEFT adapter (no adapter_config.json)",
                hint="pass the directory written by PEFT's save_pretrained",
            )
        self.config = json.loads(cfg_file.read_text())
        ptype = self.config.get("peft_type", "LORA")
        if ptype != "LORA":
            raise CheckpointError(f"adapter {self.path} is a {ptype} adapter; only LoRA adapters can be grafted")
        if self.config.get("use_dora"):
            raise CheckpointError(
                f"adapter {self.path} uses DoRA, whose update depends on the base weights' norms",
                hint="Shadow-FT's LoRA graft needs a plain LoRA adapter (use_dora=False)",
            )
        weights = self.path / "adapter_model.safetensors"
        if not weights.exists():
            raise CheckpointError(
                f"adapter {self.path} has no adapter_model.safetensors",
                hint="pickled adapter_model.bin is refused; re-save the adapter with safe_serialization=True",
            )
        self.ckpt = Checkpoint(weights, role="adapter")
        self.modules = self._modules()

    def _scale(self, module: str) -> float:
        r = self.config.get("r", 8)
        alpha = self.config.get("lora_alpha", r)
        for key, val in (self.config.get("rank_pattern") or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                r = val
                break
        for key, val in (self.config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({key})$", module):
                alpha = val
                break
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def _modules(self) -> dict[str, LoraModule]:
        groups: dict[str, dict[str, str]] = {}
        unsupported = []
        for key in self.ckpt.tensors:
            name = key[len(self.PREFIX) :] if key.startswith(self.PREFIX) else key
            m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.(weight|bias)", name)
            if not m:
                unsupported.append(key)
                continue
            module, part, kind = m.groups()
            groups.setdefault(module, {})[f"{part}.{kind}"] = key
        if unsupported:
            raise CheckpointError(
                f"adapter {self.path} holds tensors that are not LoRA A/B matrices: {', '.join(unsupported[:5])}",
                hint="modules_to_save, trainable tokens and embedding LoRA are not graftable; "
                "retrain with target_modules on linear layers only",
            )
        fifo = bool(self.config.get("fan_in_fan_out", False))
        modules = {}
        for module, parts in groups.items():
            if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
                raise CheckpointError(f"adapter {self.path}: module {module} lacks its lora_A or lora_B weight")
            lm = LoraModule(
                target=f"{module}.weight",
                a=parts["lora_A.weight"],
                b=parts["lora_B.weight"],
                scale=self._scale(module),
                fan_in_fan_out=fifo,
                bias=parts.get("lora_B.bias"),
            )
            modules[lm.target] = lm
        return modules

    def delta_shape(self, m: LoraModule) -> tuple[int, int]:
        out_f = self.ckpt.tensors[m.b].shape[0]
        in_f = self.ckpt.tensors[m.a].shape[1]
        return (in_f, out_f) if m.fan_in_fan_out else (out_f, in_f)

    def check_fits(self, model: Checkpoint) -> None:
        """Refuse an adapter whose targets are missing from, or shaped differently in, `model`."""
        missing = [t for t in self.modules if t not in model.tensors]
        if missing:
            raise PairError(
                f"adapter {self.path} targets {len(missing)} weight(s) that {model.role} {model.path} lacks, "
                f"e.g. {', '.join(missing[:3])}",
                hint="the adapter was trained on a different architecture; train it on this model's Base",
            )
        bad = [
            f"{t}: adapter gives {list(self.delta_shape(m))}, {model.role} has {list(model.tensors[t].shape)}"
            for t, m in self.modules.items()
            if tuple(model.tensors[t].shape) != self.delta_shape(m)
        ]
        if bad:
            raise PairError(
                f"adapter {self.path} does not fit {model.role} {model.path}:\n  - " + "\n  - ".join(bad[:8]),
                hint="the adapter was trained on a model with other layer sizes; train it on this model's Base",
            )

    def close(self) -> None:
        self.ckpt.close()


# --------------------------------------------------------------------------------------------
# Streaming kernels
# --------------------------------------------------------------------------------------------
class _Buffers:
    """Preallocated work buffers, reused for every tensor: one float32 accumulator, two staging
    buffers per input stream (double buffering), and one reader thread that fills the next chunk
    of each stream while the current one is computed (positioned reads release the GIL)."""

    def __init__(self, chunk: int = CHUNK, prefetch: bool = True) -> None:
        self.chunk = chunk
        self.work = torch.empty(chunk, dtype=torch.float32)
        self._staging: dict[str, torch.Tensor] = {}
        self.pending: dict[str, tuple[int, int, int, Future]] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shadowft-read") if prefetch else None

    def get(self, n: int) -> torch.Tensor:
        return self.work[:n]

    def result(self, work: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Where to put `inst + alpha * work`: the float32 sum is rounded to the output dtype in
        the same pass (torch computes in float32 and casts on store), saving a conversion pass."""
        return work if dtype == torch.float32 else self.stage("out", work.numel(), dtype)

    def stage(self, slot: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        nbytes = n * torch.empty((), dtype=dtype).element_size()
        buf = self._staging.get(slot)
        if buf is None or buf.numel() < nbytes:
            buf = self._staging[slot] = torch.empty(max(nbytes, self.chunk * 4), dtype=torch.uint8)
        return buf[:nbytes].view(dtype)

    def settle(self, slot: str) -> None:
        """Finish (and drop) a prefetch still in flight for `slot`, so its buffers can be reused."""
        pend = self.pending.pop(slot, None)
        if pend is not None:
            pend[3].result()

    def close(self) -> None:
        for slot in list(self.pending):
            try:
                self.settle(slot)
            except Exception:  # the error that matters was raised where the chunk was used
                pass
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class _Stream:
    """One input tensor read chunk by chunk; the next chunk is read ahead into the other buffer."""

    def __init__(self, ckpt: Checkpoint, name: str, bufs: _Buffers, slot: str) -> None:
        self.ckpt, self.name, self.bufs, self.slot = ckpt, name, bufs, slot
        self.info = ckpt.tensors[name]
        bufs.settle(slot)  # a read-ahead left by the previous tensor of this role
        self._next = 0

    def numel(self) -> int:
        return self.info.numel

    def _buf(self, which: int, n: int) -> torch.Tensor:
        return self.bufs.stage(f"{self.slot}{which}", n, self.info.dtype)

    def chunk(self, s: int, e: int) -> torch.Tensor:
        pend = self.bufs.pending.pop(self.slot, None)
        if pend is not None and pend[:2] == (s, e):
            pend[3].result()
            which = pend[2]
            out = self._buf(which, e - s)
        else:
            if pend is not None:
                pend[3].result()
            which = self._next
            out = self.ckpt.read_into(self.name, s, self._buf(which, e - s))
        self._next = 1 - which
        if self.bufs.pool is not None and e < self.info.numel:
            ne = min(self.info.numel, e + self.bufs.chunk)
            fut = self.bufs.pool.submit(self.ckpt.read_into, self.name, e, self._buf(self._next, ne - e))
            self.bufs.pending[self.slot] = (e, ne, self._next, fut)
        return out


def _check_finite(w: torch.Tensor, name: str, what: str) -> None:
    # One reduction: any NaN or Inf in the chunk makes the sum non-finite.
    if not math.isfinite(w.sum().item()):
        raise DivergedError(
            f"the {what} for tensor {name} contains NaN or Inf: the tuned model diverged",
            hint="re-train with a lower learning rate or gradient clipping; nothing was written",
        )


# Each kernel computes one output tensor chunk by chunk and hands every chunk, in order, to
# `emit` (the writer appends it to the shard, converted to the output dtype).
Emit = Callable[[torch.Tensor], None]


def _copy_rest(emit: Emit, inst: _Stream, start: int, bufs: _Buffers) -> None:
    for s in range(start, inst.numel(), bufs.chunk):
        emit(inst.chunk(s, min(inst.numel(), s + bufs.chunk)))


def _graft_pair(emit: Emit, inst: _Stream, base: _Stream, tuned: _Stream, alpha, n_delta, bufs, name) -> None:
    """inst + alpha * (tuned - base) on the first `n_delta` elements; the rest copied."""
    for s in range(0, n_delta, bufs.chunk):
        e = min(n_delta, s + bufs.chunk)
        w = bufs.get(e - s)
        w.copy_(tuned.chunk(s, e))
        w.sub_(base.chunk(s, e))
        _check_finite(w, name, "update (tuned - base)")
        emit(torch.add(inst.chunk(s, e), w, alpha=alpha, out=bufs.result(w, inst.info.dtype)))
    _copy_rest(emit, inst, n_delta, bufs)


def _graft_delta(emit: Emit, inst: _Stream, delta: _Stream, alpha, n_delta, bufs, name) -> None:
    """inst + alpha * delta on the first `n_delta` elements; the rest copied."""
    for s in range(0, n_delta, bufs.chunk):
        e = min(n_delta, s + bufs.chunk)
        w = bufs.get(e - s)
        w.copy_(delta.chunk(s, e))
        _check_finite(w, name, "delta")
        emit(torch.add(inst.chunk(s, e), w, alpha=alpha, out=bufs.result(w, inst.info.dtype)))
    _copy_rest(emit, inst, n_delta, bufs)


def _graft_lora(emit: Emit, inst, a, b, shape, scale, fifo, bufs, name) -> None:
    """inst + scale * (B @ A) (transposed for fan_in_fan_out), computed in row blocks."""
    rows, cols = shape
    left = (a.float().t() if fifo else b.float()).contiguous()  # [rows, r]
    right = (b.float().t() if fifo else a.float()).contiguous()  # [r, cols]
    _check_finite(left, name, "adapter")
    _check_finite(right, name, "adapter")
    step = max(1, bufs.chunk // max(cols, 1))
    for s in range(0, rows, step):
        e = min(rows, s + step)
        w = bufs.get((e - s) * cols).view(e - s, cols)
        torch.matmul(left[s:e], right, out=w)
        emit(torch.add(inst.chunk(s * cols, e * cols).view(e - s, cols), w, alpha=scale, out=w))


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------
@dataclass
class _Op:
    kind: Literal["copy", "pair", "delta", "lora", "bias"]
    name: str
    n_delta: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class GraftReport:
    """What a graft did (also written, with input fingerprints, as the provenance record)."""

    out: str
    method: str
    alpha: float
    scope: str
    grafted: int
    copied: int
    in_scope_without_update: int
    warnings: list[str]
    bytes_read: int
    bytes_written: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _row_overlap(name: str, inst: TensorInfo, src_shape: tuple[int, ...], policy: VocabPolicy, warnings: list[str]) -> int:
    """Elements of `inst` that an update of shape `src_shape` covers (vocab rows policy)."""
    if tuple(src_shape) == tuple(inst.shape):
        return inst.numel
    same_tail = len(src_shape) == len(inst.shape) and tuple(src_shape[1:]) == tuple(inst.shape[1:])
    if same_tail and policy == "overlap":
        rows = min(src_shape[0], inst.shape[0])
        warnings.append(
            f"{name}: update has {src_shape[0]} rows, instruct {inst.shape[0]}; "
            f"grafted the first {rows} rows, kept instruct's others"
        )
        return rows * math.prod(inst.shape[1:])
    if same_tail:
        raise PairError(
            f"{name} has {src_shape[0]} rows in the update but {inst.shape[0]} in instruct (vocab sizes differ)",
            hint="graft only the shared rows with --vocab-mismatch overlap, or keep embeddings out of --scope",
        )
    raise PairError(
        f"{name} has shape {list(src_shape)} in the update but {list(inst.shape)} in instruct",
        hint="the update comes from a model of another architecture or size; use the Base paired with this Instruct",
    )


def _plan(
    instruct: Checkpoint,
    scope: str,
    policy: VocabPolicy,
    delta: Checkpoint | None,
    base: Checkpoint | None,
    tuned: Checkpoint | None,
    adapter: LoraAdapter | None,
) -> tuple[list[_Op], list[str], int]:
    pattern = compile_scope(scope)
    warnings: list[str] = []
    ops: list[_Op] = []
    without_update = 0
    if adapter is not None:
        adapter.check_fits(instruct)
        biases = {m.target[: -len("weight")] + "bias": m for m in adapter.modules.values() if m.bias}
        missing_bias = [b for b in biases if b not in instruct.tensors]
        if missing_bias:
            raise PairError(f"adapter trains biases that instruct lacks: {', '.join(missing_bias[:3])}")
        skipped = [t for t in adapter.modules if not pattern.search(t)]
        if skipped:
            warnings.append(f"{len(skipped)} adapter module(s) are outside scope {scope!r} and were not applied")
    source = delta if delta is not None else tuned
    for other in (base, tuned, delta):
        problems = config_differences(other.config, instruct.config, other.role, "instruct") if other else []
        if problems:
            raise PairError(
                f"{other.role} {other.path} is not the same architecture as instruct:\n  - " + "\n  - ".join(problems),
                hint="use the Base model this Instruct model was trained from",
            )
    if source is not None:
        if instruct.tied_embeddings and "lm_head.weight" not in instruct.tensors and "lm_head.weight" in source.tensors and pattern.search("lm_head.weight"):
            raise PairError(
                "instruct ties lm_head to embed_tokens, but the update changes lm_head separately",
                hint="keep lm_head out of --scope (the default 'projections' does), or untie instruct's embeddings first",
            )
        unknown = [n for n in source.tensors if n not in instruct.tensors and pattern.search(n) and n != "lm_head.weight"]
        if unknown:
            raise PairError(
                f"the update has {len(unknown)} tensor(s) in scope that instruct lacks, e.g. {', '.join(unknown[:3])}",
                hint="the update comes from another architecture; use the Base paired with this Instruct",
            )
    if base is not None and tuned is not None:
        for n, t in tuned.tensors.items():
            if pattern.search(n) and n in instruct.tensors:
                if n not in base.tensors:
                    raise PairError(f"tensor {n} is in the tuned model but not in base", hint="check --base and --tuned")
                if base.tensors[n].shape != t.shape:
                    raise PairError(
                        f"tensor {n} has shape {list(base.tensors[n].shape)} in base but {list(t.shape)} in tuned",
                        hint="--tuned must be a fine-tune of --base (vocab resizing is not supported)",
                    )
    for name, info in instruct.tensors.items():
        if not pattern.search(name) or not info.dtype.is_floating_point:
            ops.append(_Op("copy", name))
            continue
        if adapter is not None:
            m = adapter.modules.get(name)
            bias_of = biases.get(name)
            if m is not None:
                ops.append(_Op("lora", name, extra={"module": m}))
            elif bias_of is not None:
                ops.append(_Op("bias", name, extra={"module": bias_of}))
            else:
                ops.append(_Op("copy", name))
            continue
        if source is None or name not in source.tensors:
            ops.append(_Op("copy", name))
            without_update += 1
            continue
        n_delta = _row_overlap(name, info, source.tensors[name].shape, policy, warnings)
        ops.append(_Op("delta" if delta is not None else "pair", name, n_delta=n_delta))
    if without_update and adapter is None:
        warnings.append(f"{without_update} tensor(s) in scope have no update and were copied from instruct")
    return ops, warnings, without_update


def _provenance(report: GraftReport, inputs: dict[str, Path | None], extra: dict | None = None) -> dict:
    return {
        "tool": "shadowft",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            k: {"path": str(v), "fingerprint": fingerprint_path(v)} for k, v in inputs.items() if v is not None
        },
        **report.to_dict(),
        **(extra or {}),
    }


def _refuse_out_in_inputs(out: Path, inputs: list[Path | None]) -> None:
    o = Path(out).absolute().resolve()
    for p in inputs:
        if p is not None and Path(p).absolute().resolve() in (o, *o.parents):
            raise ShadowFTError(f"--out {out} would overwrite the input {p}", hint="write the result to a new directory")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def graft(
    instruct: str | Path,
    out: str | Path,
    *,
    delta: str | Path | None = None,
    base: str | Path | None = None,
    tuned: str | Path | None = None,
    adapter: str | Path | None = None,
    alpha: float = 1.0,
    scope: str = "projections",
    max_shard_size: str | int = "5GB",
    vocab_mismatch: VocabPolicy = "error",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> GraftReport:
    """Write Instruct + alpha * update to `out` as a complete HF model dir.

    The update is one of: a delta dir (`extract_delta`), a (base, tuned) pair, or a LoRA
    adapter trained on Base. Tensors outside `scope` are copied bit-exactly from Instruct; the
    arithmetic is float32 and the result is stored in Instruct's dtype.
    """
    t0 = time.perf_counter()
    given = [x is not None for x in (delta, adapter)] + [base is not None or tuned is not None]
    if sum(given) != 1 or (base is None) != (tuned is None):
        raise ShadowFTError(
            "give exactly one update: --delta DIR, or --base DIR with --tuned DIR, or --adapter DIR",
        )
    if not math.isfinite(alpha):
        raise ShadowFTError(f"alpha must be a finite number, got {alpha}")
    compile_scope(scope)
    out = Path(out)
    _refuse_out_in_inputs(out, [instruct, delta, base, tuned, adapter])
    check_output_dir(out, overwrite)

    ci = Checkpoint(instruct, role="instruct")
    cd = Checkpoint(delta, role="delta") if delta is not None else None
    if cd is not None and (Path(delta) / PROVENANCE_NAME).is_file():
        cd.config = json.loads((Path(delta) / PROVENANCE_NAME).read_text()).get("base_config", {})
    cb = Checkpoint(base, role="base") if base is not None else None
    ct = Checkpoint(tuned, role="tuned") if tuned is not None else None
    ad = LoraAdapter(adapter) if adapter is not None else None
    opened = [c for c in (ci, cd, cb, ct) if c is not None]
    bufs: _Buffers | None = None
    try:
        ops, warnings, without_update = _plan(ci, scope, vocab_mismatch, cd, cb, ct, ad)
        method = "delta" if cd is not None else "lora" if ad is not None else "base-tuned"
        plan = [OutTensor(n, i.dtype, i.shape) for n, i in ci.tensors.items()]
        bytes_read = 0
        bufs = _Buffers()
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            writer = ShardedWriter(tmp, plan, max_shard_size=max_shard_size)
            by_name = {op.name: op for op in ops}
            for i, shard in enumerate(writer.shards):
                with writer.open_shard(i):
                    for t in shard:
                        op = by_name[t.name]
                        inst = _Stream(ci, t.name, bufs, "instruct")
                        emit = partial(writer.write, t.name)
                        bytes_read += ci.tensors[t.name].nbytes
                        if op.kind == "copy":
                            writer.copy_range(t.name, *ci.byte_range(t.name))
                        elif op.kind == "pair":
                            base_s, tuned_s = _Stream(cb, t.name, bufs, "base"), _Stream(ct, t.name, bufs, "tuned")
                            _graft_pair(emit, inst, base_s, tuned_s, alpha, op.n_delta, bufs, t.name)
                            bytes_read += cb.tensors[t.name].nbytes + ct.tensors[t.name].nbytes
                        elif op.kind == "delta":
                            _graft_delta(emit, inst, _Stream(cd, t.name, bufs, "delta"), alpha, op.n_delta, bufs, t.name)
                            bytes_read += cd.tensors[t.name].nbytes
                        elif op.kind == "lora":
                            m: LoraModule = op.extra["module"]
                            a, b = ad.ckpt.tensor(m.a), ad.ckpt.tensor(m.b)
                            _graft_lora(emit, inst, a, b, t.shape, alpha * m.scale, m.fan_in_fan_out, bufs, t.name)
                        elif op.kind == "bias":
                            m = op.extra["module"]
                            bias = _Stream(ad.ckpt, m.bias, bufs, "delta")
                            _graft_delta(emit, inst, bias, alpha * m.scale, inst.numel(), bufs, t.name)
                        if progress:
                            progress(t.name, t.nbytes)
            writer.write_index()
            copy_model_side_files(Path(instruct), tmp)
            report = GraftReport(
                out=str(out),
                method=method,
                alpha=alpha,
                scope=scope,
                grafted=sum(op.kind != "copy" for op in ops),
                copied=sum(op.kind == "copy" for op in ops),
                in_scope_without_update=without_update,
                warnings=warnings,
                bytes_read=bytes_read,
                bytes_written=sum(t.nbytes for t in plan),
                seconds=0.0,
            )
            report.seconds = round(time.perf_counter() - t0, 3)
            inputs = {"instruct": Path(instruct), "delta": delta, "base": base, "tuned": tuned, "adapter": adapter}
            (tmp / PROVENANCE_NAME).write_text(json.dumps(_provenance(report, inputs), indent=2) + "\n")
    finally:
        if bufs is not None:
            bufs.close()  # no read-ahead may still use a file we close
        for c in opened:
            c.close()
        if ad is not None:
            ad.close()
    return report


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
    base: str | Path,
    tuned: str | Path,
    out: str | Path,
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
    _refuse_out_in_inputs(out, [base, tuned])
    check_output_dir(out, overwrite)
    store = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if store is None:
        raise ShadowFTError(f"delta dtype must be float32 or bfloat16, got {dtype!r}")
    with Checkpoint(base, role="base") as cb, Checkpoint(tuned, role="tuned") as ct:
        names = [n for n, t in ct.tensors.items() if t.dtype.is_floating_point]
        missing = [n for n in names if n not in cb.tensors]
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
        bufs = _Buffers()
        meta = {"shadowft": "delta", "shadowft_version": __version__}
        with closing(bufs), atomic_output_dir(out, overwrite=overwrite) as tmp:
            writer = ShardedWriter(tmp, plan, max_shard_size=max_shard_size, metadata=meta)
            for i, shard in enumerate(writer.shards):
                with writer.open_shard(i):
                    for t in shard:
                        b, tt = _Stream(cb, t.name, bufs, "base"), _Stream(ct, t.name, bufs, "tuned")
                        for s in range(0, tt.numel(), bufs.chunk):
                            e = min(tt.numel(), s + bufs.chunk)
                            w = bufs.get(e - s)
                            w.copy_(tt.chunk(s, e))
                            w.sub_(b.chunk(s, e))
                            _check_finite(w, t.name, "update (tuned - base)")
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
            prov = {
                "tool": "shadowft",
                "version": __version__,
                "kind": "delta",
                "inputs": {
                    "base": {"path": str(base), "fingerprint": fingerprint_path(base)},
                    "tuned": {"path": str(tuned), "fingerprint": fingerprint_path(tuned)},
                },
                "base_config": cb.config,
                **report.to_dict(),
            }
            (tmp / PROVENANCE_NAME).write_text(json.dumps(prov, indent=2) + "\n")
    return report


def retarget_adapter(
    adapter: str | Path,
    instruct: str | Path,
    out: str | Path,
    *,
    alpha: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Write the Base-trained adapter as one whose base model is Instruct (for adapter serving).

    The adapter's update does not depend on the weights it is applied to, so only its
    `base_model_name_or_path` changes, after checking that it fits Instruct; `alpha` != 1
    scales lora_B (and its bias) so that serving applies alpha * update.
    """
    out = Path(out)
    _refuse_out_in_inputs(out, [adapter, instruct])
    check_output_dir(out, overwrite)
    ad = LoraAdapter(adapter)
    try:
        with Checkpoint(instruct, role="instruct") as ci:
            ad.check_fits(ci)
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            for f in Path(adapter).iterdir():
                if f.is_file() and f.name != "adapter_model.safetensors" and not f.name.startswith("."):
                    shutil.copy2(f, tmp / f.name)
            cfg = dict(ad.config)
            cfg["base_model_name_or_path"] = str(Path(instruct).absolute())
            (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            plan = [OutTensor(n, i.dtype, i.shape) for n, i in ad.ckpt.tensors.items()]
            scaled = {m.b for m in ad.modules.values()} | {m.bias for m in ad.modules.values() if m.bias}
            writer = ShardedWriter(tmp, plan, max_shard_size=1 << 62, metadata={"shadowft": "adapter"}, prefix="adapter_model")
            with writer.open_shard(0):
                for t in plan:
                    src = ad.ckpt.view(t.name)
                    writer.write(t.name, src.float() * alpha if t.name in scaled and alpha != 1.0 else src)
            prov = {
                "tool": "shadowft",
                "version": __version__,
                "kind": "adapter",
                "alpha": alpha,
                "inputs": {
                    "adapter": {"path": str(adapter), "fingerprint": fingerprint_path(adapter)},
                    "instruct": {"path": str(instruct), "fingerprint": fingerprint_path(instruct)},
                },
            }
            (tmp / PROVENANCE_NAME).write_text(json.dumps(prov, indent=2) + "\n")
    finally:
        ad.close()
    return out
