"""Pickled weights: refused by the graft, converted without running pickled code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from shadowft.errors import CheckpointError
from shadowft.graft import graft
from tests.helpers import assert_nothing_written, load_dir


def test_pickled_weights_are_refused_and_convertible(llama_trio, tmp_path):
    from shadowft.convert import convert_pickled_to_safetensors

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(llama_trio["tuned"] / "config.json", pickled)
    torch.save(load_dir(llama_trio["tuned"]), pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=pickled)
    assert_nothing_written(tmp_path / "o")
    convert_pickled_to_safetensors(pickled, tmp_path / "converted")
    # conversion only re-serialises: every tensor must come back bit for bit, in its dtype and shape
    got, want = load_dir(tmp_path / "converted"), load_dir(llama_trio["tuned"])
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        assert (g.dtype, g.shape) == (w.dtype, w.shape), name
        assert torch.equal(g.reshape(-1).view(torch.uint8), w.reshape(-1).view(torch.uint8)), f"{name} changed"


def test_pickle_with_code_is_not_executed(tmp_path):
    import pickle

    from shadowft.convert import convert_pickled_to_safetensors

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    d = tmp_path / "evil"
    d.mkdir()
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_pickled_to_safetensors(d, tmp_path / "out")
    assert not (tmp_path / "pwned").exists()
