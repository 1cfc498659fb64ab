"""`retarget_adapter`: the Base-trained adapter served on Instruct equals the merged graft."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shadowft.graft import graft, retarget_adapter
from tests.helpers import load_dir, make_adapter


def test_retargeted_adapter_serves_on_instruct(llama_trio, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(llama_trio["base"], tmp_path / "adapter")
    out = retarget_adapter(adapter, llama_trio["instruct"], tmp_path / "served")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]) == llama_trio["instruct"].absolute()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_trio["instruct"]), out)
    merged = {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}
    graft(llama_trio["instruct"], tmp_path / "merged", adapter=adapter, scope="all")
    for n, w in load_dir(tmp_path / "merged").items():
        torch.testing.assert_close(w, merged[n], rtol=1e-5, atol=1e-6)
