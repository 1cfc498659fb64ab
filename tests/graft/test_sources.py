"""Update sources: LoRA against PEFT's own merge, refused adapters, a diverged update."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from shadowft.errors import CheckpointError
from shadowft.graft import DivergedError, extract_delta, graft
from tests.helpers import assert_nothing_written, copy_dir, load_dir, make_adapter, peft_merged_state


@pytest.mark.parametrize(
    "extra", [{}, {"use_rslora": True, "rank_pattern": {"down_proj": 2}}], ids=["plain", "rslora-pattern"]
)
def test_lora_graft_equals_peft_merge(llama_trio, tmp_path, extra):
    adapter = make_adapter(llama_trio["base"], tmp_path / "adapter", **extra)
    graft(llama_trio["instruct"], tmp_path / "o", adapter=adapter, scope="all")
    got, want = load_dir(tmp_path / "o"), peft_merged_state(llama_trio["instruct"], adapter)
    inst = load_dir(llama_trio["instruct"])
    changed = 0
    for n, w in got.items():
        torch.testing.assert_close(w, want[n], rtol=1e-5, atol=1e-6, msg=n)
        changed += not torch.equal(w, inst[n])
    assert changed == 14  # 7 projections x 2 layers


def test_dora_adapter_is_refused(llama_trio, tmp_path):
    adapter = make_adapter(llama_trio["base"], tmp_path / "adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="DoRA"):
        graft(llama_trio["instruct"], tmp_path / "o", adapter=adapter)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_diverged_update_is_refused(llama_trio, tmp_path, bad_value):
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    state = load_file(bad / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = bad_value
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DivergedError, match="up_proj"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=bad)
    assert_nothing_written(tmp_path / "o")
    with pytest.raises(DivergedError):
        extract_delta(llama_trio["base"], bad, tmp_path / "d")
    assert_nothing_written(tmp_path / "d")
