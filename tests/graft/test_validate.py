"""Bad input is refused before anything is written: clear errors, nothing left in --out."""

from __future__ import annotations

import pytest
import torch

from shadowft.errors import CheckpointError, PairError
from shadowft.graft import PROVENANCE_NAME, extract_delta, graft, retarget_adapter
from tests.helpers import assert_nothing_written, copy_dir, load_dir, make_adapter, resize_vocab


def test_mismatched_architecture_is_refused(llama_trio, tmp_path, tmp_path_factory):
    from shadowft.tiny import make_trio

    qwen = make_trio(tmp_path_factory.mktemp("q"), arch="qwen3")
    with pytest.raises(PairError) as exc:
        graft(llama_trio["instruct"], tmp_path / "o", base=qwen["base"], tuned=qwen["tuned"])
    assert "model_type" in str(exc.value) and "qwen3" in str(exc.value)
    assert_nothing_written(tmp_path / "o")


def test_mismatched_shapes_are_refused(llama_trio, tmp_path, tmp_path_factory):
    from shadowft.tiny import make_trio

    wide = make_trio(tmp_path_factory.mktemp("w"), arch="llama", hidden_size=48)
    with pytest.raises(PairError, match="hidden_size"):
        graft(llama_trio["instruct"], tmp_path / "o", base=wide["base"], tuned=wide["tuned"])
    assert_nothing_written(tmp_path / "o")
    # a delta dir without config: the tensor shapes alone refuse it
    extract_delta(wide["base"], wide["tuned"], tmp_path / "d")
    (tmp_path / "d" / PROVENANCE_NAME).unlink()
    with pytest.raises(PairError, match="shape"):
        graft(llama_trio["instruct"], tmp_path / "o", delta=tmp_path / "d")
    assert_nothing_written(tmp_path / "o")


def test_adapter_for_other_architecture_is_refused(llama_trio, tmp_path, tmp_path_factory):
    from shadowft.tiny import make_trio

    other = make_trio(tmp_path_factory.mktemp("wide"), arch="llama", hidden_size=48)
    adapter = make_adapter(other["base"], tmp_path / "adapter")
    with pytest.raises(PairError, match="does not fit"):
        graft(llama_trio["instruct"], tmp_path / "o", adapter=adapter)
    with pytest.raises(PairError, match="does not fit"):
        retarget_adapter(adapter, llama_trio["instruct"], tmp_path / "o2")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_vocab_difference_policy(llama_trio, tmp_path):
    bigger = resize_vocab(llama_trio["tuned"], tmp_path / "tuned_big", 5)
    base_big = resize_vocab(llama_trio["base"], tmp_path / "base_big", 5)
    # default scope does not graft embeddings: fine
    graft(llama_trio["instruct"], tmp_path / "ok", base=base_big, tuned=bigger)
    with pytest.raises(PairError, match="vocab sizes differ"):
        graft(llama_trio["instruct"], tmp_path / "o", base=base_big, tuned=bigger, scope="all")
    assert_nothing_written(tmp_path / "o")
    rep = graft(
        llama_trio["instruct"], tmp_path / "ov", base=base_big, tuned=bigger, scope="all", vocab_mismatch="overlap"
    )
    assert any("rows" in w for w in rep.warnings)
    got, inst = load_dir(tmp_path / "ov"), load_dir(llama_trio["instruct"])
    b, t = load_dir(base_big), load_dir(bigger)
    emb = "model.embed_tokens.weight"
    rows = inst[emb].shape[0]
    assert got[emb].shape == inst[emb].shape
    torch.testing.assert_close(got[emb], inst[emb] + (t[emb][:rows] - b[emb][:rows]))


def test_truncated_shard_is_refused(qwen3_tied_sharded_trio, tmp_path):
    bad = copy_dir(qwen3_tied_sharded_trio["tuned"], tmp_path / "tuned")
    shard = sorted(bad.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        graft(qwen3_tied_sharded_trio["instruct"], tmp_path / "o", base=qwen3_tied_sharded_trio["base"], tuned=bad)
    assert_nothing_written(tmp_path / "o")


def test_corrupt_header_is_refused(llama_trio, tmp_path):
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    raw = bytearray((bad / "model.safetensors").read_bytes())
    raw[8:20] = b"not json!!!!"
    (bad / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=bad)
    assert_nothing_written(tmp_path / "o")


def test_missing_shard_named_by_index_is_refused(qwen3_tied_sharded_trio, tmp_path):
    bad = copy_dir(qwen3_tied_sharded_trio["base"], tmp_path / "base")
    victim = sorted(bad.glob("*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"missing: {victim.name}"):
        graft(qwen3_tied_sharded_trio["instruct"], tmp_path / "o", base=bad, tuned=qwen3_tied_sharded_trio["tuned"])
    assert_nothing_written(tmp_path / "o")
