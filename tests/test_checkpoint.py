"""Sharded safetensors writing and atomic publication."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from shadowft.checkpoint import Checkpoint, OutTensor, ShardedWriter, parse_size
from shadowft.errors import CheckpointError
from shadowft.files import atomic_output_dir
from shadowft.fingerprint import fingerprint_path


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("20KB") == 20_000
    assert parse_size(123) == 123
    with pytest.raises(CheckpointError, match="5GB"):
        parse_size("five gigs")


def test_sharded_writer_roundtrip_through_safetensors(tmp_path):
    tensors = {f"t{i}": torch.randn(100, 10).to(torch.bfloat16 if i % 2 else torch.float32) for i in range(5)}
    plan = [OutTensor(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    writer = ShardedWriter(tmp_path, plan, max_shard_size=5000)
    assert len(writer.shards) > 1
    for i, shard in enumerate(writer.shards):
        with writer.open_shard(i):
            for t in shard:
                writer.write(t.name, tensors[t.name].reshape(-1))
    writer.write_index()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    for name, fname in index["weight_map"].items():
        with safe_open(tmp_path / fname, "pt") as f:
            assert f.metadata()["format"] == "pt"
            assert torch.equal(f.get_tensor(name), tensors[name])
    ck = Checkpoint(tmp_path)
    assert all(torch.equal(ck.tensor(n), t) for n, t in tensors.items())


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "result"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "done").write_text("ok")
    assert (out / "done").read_text() == "ok"


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path / "nope", role="base")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no safetensors"):
        Checkpoint(tmp_path / "empty")


def test_fingerprint_changes_with_content_and_is_stable(llama_trio, tmp_path):
    import shutil

    a = fingerprint_path(llama_trio["base"])
    assert a == fingerprint_path(llama_trio["base"])
    copy = tmp_path / "copy"
    shutil.copytree(llama_trio["base"], copy)
    assert fingerprint_path(copy) == a  # content, not location
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert fingerprint_path(copy) != a
    shard = copy / "model.safetensors"
    before = fingerprint_path(copy)
    shard.write_bytes(shard.read_bytes())  # a rewrite of a weight file (new mtime) invalidates
    assert fingerprint_path(copy) != before


def test_published_dir_has_the_umask_mode_not_the_temp_dirs(tmp_path):
    """mkdtemp's 0700 must not survive the rename: a published model is readable as the umask says."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
        os.umask(0o027)
        with atomic_output_dir(tmp_path / "out2") as tmp:
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out2").stat().st_mode) == 0o750


def test_fingerprint_tells_apart_same_size_same_mtime_weights(tmp_path):
    """Copies that share size and mtime (a shipped family's Base and Instruct) still differ by content."""
    import os

    a, b = tmp_path / "a", tmp_path / "b"
    for d, byte in ((a, b"\x01"), (b, b"\x02")):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\x00" * 100_000 + byte * 100_000)
        os.utime(d / "model.safetensors", ns=(1_000_000_000, 1_000_000_000))
    assert fingerprint_path(a) != fingerprint_path(b)
