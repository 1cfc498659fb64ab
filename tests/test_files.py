"""Output dirs of the commands that write models (`shadowft.files`): never half written, never an
arbitrary folder replaced, and a clean error where the output cannot be made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shadowft.errors import OutputExistsError, ShadowFTError
from shadowft.files import atomic_output_dir


def test_an_output_under_a_file_or_on_a_read_only_file_system_is_a_clean_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ShadowFTError, match="is a file"):
        with atomic_output_dir(tmp_path / "afile" / "out"):
            pass
    assert (tmp_path / "afile").read_text() == "x"
    # /proc/sys accepts no new directories (for root too): the same failure as a read-only mount
    with pytest.raises(ShadowFTError, match="cannot create the output /proc/sys/shadowft-out"):
        with atomic_output_dir(Path("/proc/sys/shadowft-out")):
            pass


def test_convert_overwrite_replaces_only_its_own_earlier_output(tmp_path):
    from shadowft.convert import convert_pickled_to_safetensors

    src = tmp_path / "src"
    src.mkdir()
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, src / "pytorch_model.bin")
    user = tmp_path / "my-folder"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not written by shadowft"):
        convert_pickled_to_safetensors(src, user, overwrite=True)
    assert (user / "notes.txt").read_text() == "mine"
    out = tmp_path / "converted"
    assert convert_pickled_to_safetensors(src, out) == 1
    assert convert_pickled_to_safetensors(src, out, overwrite=True) == 1  # its own output: replaced
    with pytest.raises(ShadowFTError, match="contains the input"):
        convert_pickled_to_safetensors(src, tmp_path, overwrite=True)
    assert (src / "pytorch_model.bin").is_file()
