"""The streaming engine: arithmetic on one thread while it runs, the caller's setting restored."""

from __future__ import annotations

import pytest
import torch

from shadowft.graft import DivergedError, graft
from shadowft.graft.engine import Buffers


def test_one_compute_thread_inside_and_restored_after(llama_trio, tmp_path):
    before = torch.get_num_threads()
    with Buffers():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(DivergedError), Buffers():
        raise DivergedError("boom")
    assert torch.get_num_threads() == before
    graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"])
    assert torch.get_num_threads() == before
