"""Hostile and corrupt inputs of the weight commands (issue 22): each is refused with a clear
error naming the file (and tensor), never read as wrong weights, a traceback or a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from shadowft.checkpoint import Checkpoint
from shadowft.errors import CheckpointError, PairError, ShadowFTError
from shadowft.graft import extract_delta, graft
from tests.helpers import assert_nothing_written, copy_dir, make_adapter
from tests.hostile import edit_header, first_tensor, run_cli, split_safetensors, write_safetensors

SHARD = "model.safetensors"


def _reverse(h: dict) -> None:
    t = h[first_tensor(h, "q_proj")]
    t["data_offsets"] = t["data_offsets"][::-1]


def _overlap(h: dict) -> None:
    """Two tensors of equal size: the second points at the first one's bytes (a valid length)."""
    a, b = (h[first_tensor(h, p)] for p in ("layers.0.self_attn.q_proj", "layers.0.self_attn.o_proj"))
    assert a["shape"] == b["shape"] and a["dtype"] == b["dtype"]
    b["data_offsets"] = list(a["data_offsets"])


def _short(h: dict) -> None:
    h[first_tensor(h, "q_proj")]["shape"][0] -= 1


def _no_dtype(h: dict) -> None:
    del h[first_tensor(h, "q_proj")]["dtype"]


def _unknown_dtype(h: dict) -> None:
    h[first_tensor(h, "q_proj")]["dtype"] = "Q4"


def _entry_not_object(h: dict) -> None:
    h[first_tensor(h, "q_proj")] = [1, 2, 3]


def _shape_of_strings(h: dict) -> None:
    h[first_tensor(h, "q_proj")]["shape"] = ["16", "64"]


CORRUPT_HEADERS = {
    "reversed-offsets": (_reverse, "reversed data_offsets"),
    "overlapping-offsets": (_overlap, "overlaps tensor"),
    "length-not-shape-x-dtype": (_short, "needs"),
    "entry-without-dtype": (_no_dtype, "has no dtype"),
    "unknown-dtype": (_unknown_dtype, "dtype Q4"),
    "entry-not-an-object": (_entry_not_object, "is not a JSON object"),
    "shape-of-strings": (_shape_of_strings, "not a list of non-negative integers"),
    "header-a-list": (lambda h: [h], "header is a JSON list"),
}


@pytest.mark.parametrize("side", ["tuned", "instruct"])
@pytest.mark.parametrize("case", list(CORRUPT_HEADERS))
def test_corrupt_shard_header_is_refused_naming_file_and_tensor(llama_trio, tmp_path, case, side):
    """Before: exit 0 and a wrong tensor in the output (tuned side), a KeyError (instruct side)."""
    edit, message = CORRUPT_HEADERS[case]
    bad = copy_dir(llama_trio[side], tmp_path / side)
    edit_header(bad / SHARD, edit)
    with pytest.raises(SafetensorError):  # the safetensors library refuses the same file
        safe_open(bad / SHARD, "pt")
    trio = {**llama_trio, side: bad}
    with pytest.raises(CheckpointError, match=message) as info:
        graft(trio["instruct"], tmp_path / "o", base=trio["base"], tuned=trio["tuned"])
    assert str(bad / SHARD) in info.value.message
    if case not in ("header-a-list",):
        assert "q_proj" in info.value.message or "o_proj" in info.value.message
    assert_nothing_written(tmp_path / "o")


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"[" * 200_000 + b"]" * 200_000, "nests too deeply"),
        (b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "a": {}}', "appears twice"),
        (b"\xff\xfe{}", "utf-8"),
    ],
    ids=["nested-200000-deep", "duplicate-key", "not-utf8"],
)
def test_unparseable_header_is_a_clean_error(llama_trio, tmp_path, raw, message):
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    _, data = split_safetensors(bad / SHARD)
    write_safetensors(bad / SHARD, raw, data)
    with pytest.raises(CheckpointError, match=message):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=bad)
    assert_nothing_written(tmp_path / "o")


def test_bytes_after_the_last_tensor_are_refused(llama_trio, tmp_path):
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    with open(bad / SHARD, "ab") as f:
        f.write(b"\0" * 64)
    with pytest.raises(CheckpointError, match="64 bytes after its last tensor"):
        Checkpoint(bad)


def test_corrupt_header_through_the_cli_is_error_and_hint(llama_trio, tmp_path):
    """A real subprocess: exit 2, `error:` and `hint:`, no traceback (before: exit 0, wrong weights)."""
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    edit_header(bad / SHARD, _overlap)
    out = tmp_path / "o"
    args = ["graft", "--instruct", llama_trio["instruct"], "--base", llama_trio["base"], "--tuned", bad, "--out", out]
    r = subprocess.run([sys.executable, "-m", "shadowft", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "error:" in r.stderr and "hint:" in r.stderr and "overlaps" in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


# -- the update's two sides --------------------------------------------------------------------------
def test_base_and_tuned_of_different_dtypes_are_refused(llama_trio, tmp_path):
    """Before: the float32 Base and the same weights re-saved in bfloat16 grafted rounding noise."""
    same = tmp_path / "base-bf16"
    copy_dir(llama_trio["base"], same)
    state = {n: t.to(torch.bfloat16) for n, t in load_file(same / SHARD).items()}
    save_file(state, same / SHARD, metadata={"format": "pt"})
    with pytest.raises(PairError, match="another dtype in base than in tuned") as info:
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=same)
    assert "float32" in info.value.message and "bfloat16" in info.value.message
    assert_nothing_written(tmp_path / "o")
    with pytest.raises(PairError, match="another dtype"):
        extract_delta(llama_trio["base"], same, tmp_path / "d")
    assert_nothing_written(tmp_path / "d")


def test_tuned_in_a_wider_dtype_than_base_is_grafted_exactly(bf16_trio, tmp_path):
    """The pipeline's default: a full fine-tune of a bfloat16 Base saved in float32 (exact widening)."""
    wide = copy_dir(bf16_trio["tuned"], tmp_path / "tuned-fp32")
    save_file({n: t.float() for n, t in load_file(wide / SHARD).items()}, wide / SHARD, metadata={"format": "pt"})
    graft(bf16_trio["instruct"], tmp_path / "a", base=bf16_trio["base"], tuned=wide)
    graft(bf16_trio["instruct"], tmp_path / "b", base=bf16_trio["base"], tuned=bf16_trio["tuned"])
    a, b = load_file(tmp_path / "a" / SHARD), load_file(tmp_path / "b" / SHARD)
    assert all(torch.equal(a[n], b[n]) for n in b)


@pytest.fixture(scope="module")
def fp16_trio(tmp_path_factory):
    from shadowft.tiny import make_trio

    return make_trio(tmp_path_factory.mktemp("fp16"), arch="llama", dtype=torch.float16)


def test_result_that_overflows_the_instruct_dtype_is_refused(fp16_trio, tmp_path):
    """Before: `--alpha 1e8` onto a float16 Instruct wrote tensors of Inf, exit 0."""
    t = fp16_trio
    with pytest.raises(ShadowFTError, match="does not fit float16"):
        graft(t["instruct"], tmp_path / "o", base=t["base"], tuned=t["tuned"], alpha=1e8)
    assert_nothing_written(tmp_path / "o")
    args = ["graft", "--instruct", t["instruct"], "--base", t["base"], "--tuned", t["tuned"], "--out", tmp_path / "o"]
    code, err = run_cli(*args, "--alpha", "1e8")
    assert code == 2 and "does not fit float16" in err and "hint:" in err, err
    assert_nothing_written(tmp_path / "o")
    code, err = run_cli(*args)  # alpha 1 fits
    assert code == 0, err


# -- scope -------------------------------------------------------------------------------------------
def test_scope_that_selects_nothing_is_refused(llama_trio, tmp_path):
    """Before: `--scope nomatch` exited 0 with "grafted 0 tensors", a copy of Instruct."""
    with pytest.raises(PairError, match="selects no tensor of instruct"):
        graft(
            llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"], scope="nomatch"
        )
    assert_nothing_written(tmp_path / "o")
    adapter = make_adapter(llama_trio["base"], tmp_path / "adapter", target_modules=["q_proj"])
    with pytest.raises(PairError, match="changes none of the 6 tensor"):
        graft(llama_trio["instruct"], tmp_path / "o", adapter=adapter, scope="mlp")
    assert_nothing_written(tmp_path / "o")


# -- index files and where shards may be -------------------------------------------------------------
def _index(model, edit) -> None:
    f = model / "model.safetensors.index.json"
    data = json.loads(f.read_text())
    new = edit(data)
    f.write_text(json.dumps(data if new is None else new))


def _first_entry(data: dict) -> str:
    return sorted(data["weight_map"])[0]


def test_index_naming_files_outside_the_model_dir_is_refused(qwen3_tied_sharded_trio, tmp_path):
    """Before: `/etc/passwd` was opened (its size shown in the error); `../x` gave a misleading one."""
    trio = qwen3_tied_sharded_trio
    for target in ("/etc/passwd", "../outside.safetensors", "sub/../../x.safetensors"):
        bad = copy_dir(trio["base"], tmp_path / f"base-{abs(hash(target))}")
        _index(bad, lambda d, t=target: d["weight_map"].__setitem__(_first_entry(d), t))
        with pytest.raises(CheckpointError, match="not a file inside the model dir") as info:
            graft(trio["instruct"], tmp_path / "o", base=bad, tuned=trio["tuned"])
        assert "bytes" not in info.value.message  # nothing of the named file was read
    assert_nothing_written(tmp_path / "o")


def test_shard_symlinked_outside_the_model_dir_is_refused(llama_trio, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    os.replace(bad / SHARD, outside)
    (bad / SHARD).symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside the model dir"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=bad)
    assert_nothing_written(tmp_path / "o")


def test_shards_linked_into_a_hub_cache_or_inside_the_dir_are_read(llama_trio, tmp_path):
    """The policy's allowed links: a hub snapshot's links to its blobs, and links within the dir."""
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    copy_dir(llama_trio["tuned"], snap)
    os.replace(snap / SHARD, repo / "blobs" / "0123abcd")
    (snap / SHARD).symlink_to("../../blobs/0123abcd")
    with Checkpoint(snap) as c:
        assert len(c.tensors) == len(load_file(repo / "blobs" / "0123abcd"))
    inside = copy_dir(llama_trio["tuned"], tmp_path / "inside")
    (inside / "weights").mkdir()
    os.replace(inside / SHARD, inside / "weights" / "w.safetensors")
    (inside / SHARD).symlink_to("weights/w.safetensors")
    with Checkpoint(inside) as c:
        assert c.tensors


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: {"weight_map": list(d["weight_map"].items())}, "not a valid safetensors index"),
        (lambda d: [d], "holds a JSON list, not an object"),
        (lambda d: {"weight_map": {}}, "not a valid safetensors index"),
        (lambda d: {"weight_map": {k: 1 for k in d["weight_map"]}}, "not a valid safetensors index"),
    ],
    ids=["weight_map-a-list", "index-a-list", "weight_map-empty", "weight_map-of-numbers"],
)
def test_malformed_index_is_a_clean_error(qwen3_tied_sharded_trio, tmp_path, edit, message):
    trio = qwen3_tied_sharded_trio
    bad = copy_dir(trio["tuned"], tmp_path / "tuned")
    _index(bad, edit)
    with pytest.raises(CheckpointError, match=message):
        graft(trio["instruct"], tmp_path / "o", base=trio["base"], tuned=bad)
    assert_nothing_written(tmp_path / "o")


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ("[1, 2]", "holds a JSON list")])
def test_malformed_config_json_is_a_clean_error(llama_trio, tmp_path, text, message):
    bad = copy_dir(llama_trio["base"], tmp_path / "base")
    (bad / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message) as info:
        graft(llama_trio["instruct"], tmp_path / "o", base=bad, tuned=llama_trio["tuned"])
    assert "config.json" in info.value.message
    assert_nothing_written(tmp_path / "o")


@pytest.mark.timeout(60)
def test_fifo_named_like_a_shard_is_refused_not_waited_on(llama_trio, tmp_path):
    """Before: a FIFO named `model.safetensors` hung the graft in open()."""
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    (bad / SHARD).unlink()
    os.mkfifo(bad / SHARD)
    with pytest.raises(CheckpointError, match="not a regular file"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=bad)
    (bad / "config.json").unlink()
    os.mkfifo(bad / "config.json")
    (bad / SHARD).unlink()
    copy_dir(llama_trio["tuned"], tmp_path / "t2")
    os.replace(tmp_path / "t2" / SHARD, bad / SHARD)
    with pytest.raises(CheckpointError, match="cannot be read"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=bad)
    assert_nothing_written(tmp_path / "o")


@pytest.mark.parametrize("role", ["base", "tuned", "delta", "adapter", "instruct", "instruct-cli"])
def test_model_dir_that_is_a_symlink_loop_is_a_clean_error(llama_trio, tmp_path, role):
    """Before: a RuntimeError traceback from resolving the loop."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    if role == "instruct-cli":
        code, err = run_cli("graft", "--instruct", loop, "--delta", loop, "--out", tmp_path / "o")
        assert code == 2 and "symlink loop" in err, err
        return
    inputs = {"base": llama_trio["base"], "tuned": llama_trio["tuned"]} if role in ("base", "tuned", "instruct") else {}
    instruct = loop if role == "instruct" else llama_trio["instruct"]
    if role != "instruct":
        inputs[role] = loop
    with pytest.raises(CheckpointError, match=f"{role} {loop} is a symlink loop"):
        graft(instruct, tmp_path / "o", **inputs)
    assert_nothing_written(tmp_path / "o")
    if role in ("base", "tuned"):
        with pytest.raises(CheckpointError, match=f"{role} {loop} is a symlink loop"):
            extract_delta(inputs["base"], inputs["tuned"], tmp_path / "d")


# -- adapters ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_dir(llama_trio, tmp_path_factory):
    return make_adapter(llama_trio["base"], tmp_path_factory.mktemp("adapter") / "adapter")


def _config(key, value):
    def edit(adapter):
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        cfg[key] = value
        (adapter / "adapter_config.json").write_text(json.dumps(cfg))

    return edit


def _tensors(edit_state):
    def edit(adapter):
        f = adapter / "adapter_model.safetensors"
        state = load_file(f)
        edit_state(state)
        save_file(state, f)

    return edit


def _a_of(state: dict) -> str:
    return next(k for k in sorted(state) if "lora_A" in k)


ADAPTER_CASES = {
    "r-zero": (_config("r", 0), "r = 0"),
    "alpha-a-string": (_config("lora_alpha", "16"), "lora_alpha = '16'"),
    "rank-pattern-bad-regex": (_config("rank_pattern", {"(": 2}), "not a valid regular expression"),
    "rank-pattern-not-a-rank": (_config("rank_pattern", {"q_proj": -1}), "positive integer rank"),
    "config-not-json": (lambda a: (a / "adapter_config.json").write_text("{r: 4"), "not valid JSON"),
    "config-a-list": (lambda a: (a / "adapter_config.json").write_text("[]"), "holds a JSON list"),
    "lora-A-1d": (_tensors(lambda s: s.__setitem__(_a_of(s), s[_a_of(s)].reshape(-1))), "must be matrices"),
    "rank-mismatch": (_tensors(lambda s: s.__setitem__(_a_of(s), s[_a_of(s)][:3].contiguous())), "their rank"),
}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_malformed_adapter_is_a_clean_error(llama_trio, adapter_dir, tmp_path, case):
    """Before: ZeroDivisionError, TypeError, IndexError or re.error tracebacks."""
    edit, message = ADAPTER_CASES[case]
    bad = copy_dir(adapter_dir, tmp_path / "adapter")
    edit(bad)
    with pytest.raises(ShadowFTError, match=message):
        graft(llama_trio["instruct"], tmp_path / "o", adapter=bad)
    assert_nothing_written(tmp_path / "o")
