"""Fuzz the weight readers through `shadowft graft`: seeded random mutations of real shards
(headers and bytes), index files, config.json, delta provenance and LoRA adapters.

Every input must end in one of two ways: exit 2 with `error:` (a ShadowFTError; any other
exception propagates out of the in-process CLI and fails the test), or exit 0 with the right
output, checked against an independent oracle (the safetensors library's own loader and the
graft formula). Exit 0 on an input the safetensors library refuses is a failure: it is the "wrong
weights, exit 0" of issue 22.

Bounded for CI (SHADOWFT_FUZZ_SECONDS per target, default 12 s: about a minute for the five
targets); a longer local pass: SHADOWFT_FUZZ_EXAMPLES=2000 (inputs per target, time unbounded).
SHADOWFT_FUZZ_SEED picks another sequence; a failure names the seed and index that reproduce it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shadowft.scope import in_scope
from tests.helpers import copy_dir, make_adapter
from tests.hostile import run_cli

SECONDS = float(os.environ.get("SHADOWFT_FUZZ_SECONDS", "12"))
EXAMPLES = int(os.environ.get("SHADOWFT_FUZZ_EXAMPLES", "0"))  # > 0: exactly this many per target
SEED = int(os.environ.get("SHADOWFT_FUZZ_SEED", "0"))
SLOW = 20.0  # seconds: an input that takes longer is reported as a hang
TOTALS: Counter = Counter()

DTYPE_NAMES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "U64", "Q4", "", "f32"]


# -- random JSON -------------------------------------------------------------------------------------
def random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([0, 1, -1, 2, 7, 8, 2**31, 2**63, 2**64 + 1, -(2**63), 10**30])
    if kind == 1:
        return rng.choice([0.0, 0.5, -1.5, 1e308, float("nan"), float("inf")])
    if kind == 2:
        return rng.choice(["", "F32", "x", "../x", "/etc/passwd", "model.safetensors", "\u00e9", "16", "a" * 300])
    if kind == 3:
        return None
    if kind == 4:
        return rng.choice([True, False])
    if kind == 5:
        return []
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["dtype", "shape", "data_offsets", "r", "k", ""]): random_json(rng, depth + 1) for _ in range(3)}


def mutate_number(rng: random.Random, x: object) -> object:
    if isinstance(x, int) and not isinstance(x, bool):
        return rng.choice([x + 1, x - 1, x + 4, x - 4, x * 2, x // 2, 0, -x, x + 2**32, str(x), float(x)])
    return random_json(rng)


# -- mutators of one file ----------------------------------------------------------------------------
def split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(header: object, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def mutate_header(rng: random.Random, header: dict) -> object:
    """A structural mutation of a parsed safetensors header (in place, or a replacement)."""
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    op = rng.randrange(12)
    if op == 0:  # one field gets a random value
        entry[rng.choice(["dtype", "shape", "data_offsets"])] = random_json(rng)
    elif op == 1:
        entry["dtype"] = rng.choice(DTYPE_NAMES)
    elif op == 2 and entry["shape"]:
        i = rng.randrange(len(entry["shape"]))
        entry["shape"][i] = mutate_number(rng, entry["shape"][i])
    elif op == 3:
        entry["shape"] = entry["shape"][::-1] if rng.random() < 0.5 else [*entry["shape"], 1]
    elif op == 4:
        i = rng.randrange(2)
        entry["data_offsets"][i] = mutate_number(rng, entry["data_offsets"][i])
    elif op == 5:
        entry["data_offsets"] = entry["data_offsets"][::-1]
    elif op == 6:  # point at another tensor's bytes
        entry["data_offsets"] = list(header[rng.choice(names)]["data_offsets"])
    elif op == 7:
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
    elif op == 8:
        del header[name]
    elif op == 9:  # a second name for the same bytes, or a tensor renamed
        header[rng.choice([name + "x", rng.choice(names), "lm_head.weight", ""])] = dict(entry)
        if rng.random() < 0.5:
            del header[name]
    elif op == 10:
        header["__metadata__"] = random_json(rng)
    else:
        return random_json(rng)
    return header


def mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    """A byte-level mutation: the length field, a byte of the header or data, truncation, appending."""
    b = bytearray(raw)
    (n,) = struct.unpack("<Q", raw[:8])
    op = rng.randrange(6)
    if op == 0:
        b[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, n + 8, len(raw), 2**40, 2**64 - 1]))
    elif op == 1:  # a byte of the header text
        i = 8 + rng.randrange(n)
        b[i] = rng.choice(b'{}[]",:0123456789 \x00\xff')
    elif op == 2:  # a byte of the data: still a valid file, other weights (the oracle checks them)
        i = 8 + n + rng.randrange(len(raw) - 8 - n)
        b[i] = rng.randrange(256)
    elif op == 3:
        del b[rng.randrange(len(b)) :]
    elif op == 4:
        b += bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 64])))
    else:  # the header text cut short (the length field kept consistent)
        header = raw[8 : 8 + n][: rng.randrange(n)]
        b = bytearray(struct.pack("<Q", len(header)) + header + raw[8 + n :])
    return bytes(b)


def mutate_shard(rng: random.Random, file: Path) -> None:
    raw = file.read_bytes()
    if rng.random() < 0.6:
        header, data = split(raw)
        file.write_bytes(join(mutate_header(rng, header), data))
    else:
        file.write_bytes(mutate_bytes(rng, raw))


def mutate_json_file(rng: random.Random, file: Path, fields: list[str]) -> None:
    """A field of a JSON object set to a random value or removed, the whole value replaced, or the
    text garbled."""
    text = file.read_text()
    op = rng.randrange(5)
    if op <= 1:
        data = json.loads(text)
        key = rng.choice(fields)
        if op == 0:
            data[key] = random_json(rng)
        else:
            data.pop(key, None)
        file.write_text(json.dumps(data))
    elif op == 2:
        file.write_text(json.dumps(random_json(rng)))
    elif op == 3:
        file.write_text(text[: rng.randrange(len(text))])
    else:
        i = rng.randrange(len(text))
        file.write_text(text[:i] + rng.choice('{}[]",:x0') + text[i + 1 :])


def mutate_index(rng: random.Random, file: Path) -> None:
    data = json.loads(file.read_text())
    wm = data["weight_map"]
    op = rng.randrange(5)
    name = rng.choice(sorted(wm))
    if op == 0:
        wm[name] = rng.choice(
            [
                "/etc/passwd",
                "../outside.safetensors",
                "missing.safetensors",
                "",
                "config.json",
                "model.safetensors.index.json",
                ".",
                "sub/x.safetensors",
                rng.choice(sorted(set(wm.values()))),
            ]
        )
    elif op == 1:
        del wm[name]
    elif op == 2:
        wm[name + ".extra"] = wm[name]
    elif op == 3:
        data["weight_map"] = random_json(rng)
    else:
        mutate_json_file(rng, file, ["weight_map", "metadata"])
        return
    file.write_text(json.dumps(data))


# -- the oracle --------------------------------------------------------------------------------------
def oracle_load(model: Path) -> dict[str, torch.Tensor]:
    """The tensors as transformers would load them: the safetensors library over the shards the
    index names (all of them without an index). Raises on anything it refuses."""
    index = model / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        files = sorted(set(wm.values()))
        assert all(isinstance(f, str) and "/" not in f and f not in ("", ".", "..") for f in files)
    else:
        files = sorted(f.name for f in model.glob("*.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        state = load_file(model / f)
        assert not set(state) & set(out), "a tensor in two shards"
        out.update(state)
    if index.exists():
        assert all(wm[n] in files and n in load_file(model / wm[n]) for n in wm), "index and shards disagree"
    return out


def expected_pair_graft(base: Path, tuned: Path, instruct: Path) -> dict[str, torch.Tensor]:
    b, t, i = oracle_load(base), oracle_load(tuned), oracle_load(instruct)
    return {
        n: (w.float() + (t[n].float() - b[n].float())).to(w.dtype)
        if in_scope(n, "projections") and w.dtype.is_floating_point and n in t
        else w
        for n, w in i.items()
    }


def same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return got.keys() == want.keys() and all(
        got[n].dtype == want[n].dtype and got[n].shape == want[n].shape and torch.equal(got[n], want[n]) for n in want
    )


# -- the loop ----------------------------------------------------------------------------------------
def fuzz(target: str, tmp: Path, one: Callable[[random.Random, Path], tuple[list[object], Callable[[Path], None]]]):
    """Run `one` (mutate copies of the inputs in a work dir; -> graft CLI args, check of a success)
    on seeded inputs until the budget is spent; -> outcome counts."""
    outcomes: Counter = Counter()
    t0, i = time.monotonic(), 0
    while (i < EXAMPLES) if EXAMPLES else (time.monotonic() - t0 < SECONDS):
        rng = random.Random(f"{SEED}/{target}/{i}")
        work = tmp / f"{target}-{i}"
        work.mkdir()
        args, check = one(rng, work)
        out = work / "out"
        where = f"{target} input {i} (SHADOWFT_FUZZ_SEED={SEED})"
        started = time.monotonic()
        code, err = run_cli("graft", *args, "--out", out)
        assert time.monotonic() - started < SLOW, f"{where}: took {time.monotonic() - started:.0f}s"
        assert code in (0, 2), f"{where}: exit {code}: {err[-2000:]}"
        if code == 2:
            assert err.lstrip().startswith("error:"), f"{where}: {err[-2000:]}"
            assert not out.exists(), f"{where}: refused, yet {out} was written"
            outcomes["refused"] += 1
        else:
            check(out)  # raises with the details when the output is wrong or the input was refusable
            outcomes["grafted"] += 1
        shutil.rmtree(work)
        i += 1
    TOTALS[target] += i
    print(f"\nfuzz {target}: {i} inputs in {time.monotonic() - t0:.0f}s: {dict(outcomes)}")
    assert outcomes, "no input was tried"
    return outcomes


def _pair_check(base: Path, tuned: Path, instruct: Path, where: str) -> Callable[[Path], None]:
    def check(out: Path) -> None:
        try:
            want = expected_pair_graft(base, tuned, instruct)
        except Exception as exc:  # the safetensors library (or the index) refuses an input
            raise AssertionError(f"{where}: exit 0 on an input the safetensors library refuses ({exc})") from None
        assert same(oracle_load(out), want), f"{where}: exit 0 with wrong weights"

    return check


@pytest.mark.slow
def test_fuzz_shard_headers_and_bytes(llama_trio, tmp_path):
    """Base, tuned or instruct shard mutated (header structure or raw bytes)."""

    def one(rng: random.Random, work: Path):
        dirs = {r: copy_dir(llama_trio[r], work / r) for r in ("base", "tuned", "instruct")}
        role = rng.choice(list(dirs))
        mutate_shard(rng, dirs[role] / "model.safetensors")
        args = ["--instruct", dirs["instruct"], "--base", dirs["base"], "--tuned", dirs["tuned"], "--force"]
        return args, _pair_check(dirs["base"], dirs["tuned"], dirs["instruct"], f"{role} shard of {work.name}")

    fuzz("shards", tmp_path, one)


@pytest.mark.slow
def test_fuzz_index_files(qwen3_tied_sharded_trio, tmp_path):
    """The index of a sharded base, tuned or instruct mutated (names, types, garbled JSON)."""
    trio = qwen3_tied_sharded_trio

    def one(rng: random.Random, work: Path):
        dirs = {r: copy_dir(trio[r], work / r) for r in ("base", "tuned", "instruct")}
        role = rng.choice(list(dirs))
        mutate_index(rng, dirs[role] / "model.safetensors.index.json")
        if rng.random() < 0.3:  # and a shard too
            mutate_shard(rng, rng.choice(sorted(dirs[role].glob("*.safetensors"))))
        args = ["--instruct", dirs["instruct"], "--base", dirs["base"], "--tuned", dirs["tuned"], "--force"]
        return args, _pair_check(dirs["base"], dirs["tuned"], dirs["instruct"], f"{role} index of {work.name}")

    fuzz("index", tmp_path, one)


CONFIG_FIELDS = ["model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings"]


@pytest.mark.slow
def test_fuzz_config_json(llama_trio, tmp_path):
    """config.json of base, tuned or instruct mutated: never changes the weights, so a graft that
    succeeds must give the unchanged result."""

    def one(rng: random.Random, work: Path):
        dirs = {r: copy_dir(llama_trio[r], work / r) for r in ("base", "tuned", "instruct")}
        role = rng.choice(list(dirs))
        mutate_json_file(rng, dirs[role] / "config.json", CONFIG_FIELDS)
        args = ["--instruct", dirs["instruct"], "--base", dirs["base"], "--tuned", dirs["tuned"], "--force"]
        return args, _pair_check(dirs["base"], dirs["tuned"], dirs["instruct"], f"{role} config of {work.name}")

    fuzz("config", tmp_path, one)


@pytest.fixture(scope="module")
def delta_dir(llama_trio, tmp_path_factory) -> Path:
    from shadowft.graft import extract_delta

    out = tmp_path_factory.mktemp("fuzz-delta") / "delta"
    extract_delta(llama_trio["base"], llama_trio["tuned"], out)
    return out


@pytest.mark.slow
def test_fuzz_delta_provenance_and_shard(llama_trio, delta_dir, tmp_path):
    """A stored delta: its provenance record (the Base structure it carries) or its shard mutated."""
    from shadowft.graft import PROVENANCE_NAME

    def one(rng: random.Random, work: Path):
        delta = copy_dir(delta_dir, work / "delta")
        if rng.random() < 0.5:
            mutate_json_file(rng, delta / PROVENANCE_NAME, ["base_config", "base_structure", "inputs", "kind"])
        else:
            mutate_shard(rng, delta / "model.safetensors")

        def check(out: Path) -> None:
            try:
                d, inst = oracle_load(delta), oracle_load(llama_trio["instruct"])
            except Exception as exc:
                raise AssertionError(f"delta {work.name}: exit 0 on a delta safetensors refuses ({exc})") from None
            want = {
                n: (w.float() + d[n].float()).to(w.dtype) if in_scope(n, "projections") and n in d else w
                for n, w in inst.items()
            }
            assert same(oracle_load(out), want), f"delta {work.name}: exit 0 with wrong weights"

        return ["--instruct", llama_trio["instruct"], "--delta", delta, "--force"], check

    fuzz("delta", tmp_path, one)


@pytest.fixture(scope="module")
def adapter_dir(llama_trio, tmp_path_factory) -> Path:
    return make_adapter(llama_trio["base"], tmp_path_factory.mktemp("fuzz-adapter") / "adapter")


ADAPTER_FIELDS = ["r", "lora_alpha", "rank_pattern", "alpha_pattern", "peft_type", "use_dora", "use_rslora"]


@pytest.mark.slow
def test_fuzz_lora_adapters(llama_trio, adapter_dir, tmp_path):
    """A LoRA adapter: its config fields or its shard mutated. A success must load with the
    safetensors library and give finite tensors of Instruct's shapes and dtypes."""

    def one(rng: random.Random, work: Path):
        adapter = copy_dir(adapter_dir, work / "adapter")
        if rng.random() < 0.5:
            mutate_json_file(rng, adapter / "adapter_config.json", ADAPTER_FIELDS)
        else:
            mutate_shard(rng, adapter / "adapter_model.safetensors")

        def check(out: Path) -> None:
            try:
                load_file(adapter / "adapter_model.safetensors")
            except Exception as exc:
                raise AssertionError(f"adapter {work.name}: exit 0 on a file safetensors refuses ({exc})") from None
            got, inst = oracle_load(out), oracle_load(llama_trio["instruct"])
            assert got.keys() == inst.keys()
            for n, w in inst.items():
                assert got[n].shape == w.shape and got[n].dtype == w.dtype and torch.isfinite(got[n]).all(), n

        return ["--instruct", llama_trio["instruct"], "--adapter", adapter, "--scope", "all"], check

    fuzz("adapter", tmp_path, one)
