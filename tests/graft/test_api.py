"""`graft` end to end: output against an independent computation, scope, the output dir."""

from __future__ import annotations

import json

import pytest
import torch

from shadowft.checkpoint import Checkpoint
from shadowft.errors import OutputExistsError, ShadowFTError
from shadowft.graft import PROVENANCE_NAME, graft
from shadowft.scope import in_scope
from tests.helpers import expected_graft, load_dir


@pytest.mark.parametrize("trio_name", ["llama_trio", "qwen3_tied_sharded_trio", "bf16_trio"])
def test_graft_matches_independent_computation(trio_name, request, tmp_path):
    trio = request.getfixturevalue(trio_name)
    report = graft(trio["instruct"], tmp_path / "out", base=trio["base"], tuned=trio["tuned"], max_shard_size="40KB")
    got, want, inst = load_dir(tmp_path / "out"), expected_graft(trio, 1.0, "projections"), load_dir(trio["instruct"])
    assert got.keys() == want.keys()
    for n in want:
        assert got[n].dtype == inst[n].dtype, n
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=0, msg=n)
        if not in_scope(n, "projections"):
            assert torch.equal(got[n].view(torch.uint8), inst[n].view(torch.uint8)), f"{n} not copied bit-exactly"
    assert report.grafted == sum(in_scope(n, "projections") for n in want)
    assert report.grafted > 0 and report.copied > 0


def test_regex_scope_touches_only_matching(llama_trio, tmp_path):
    graft(
        llama_trio["instruct"],
        tmp_path / "o",
        base=llama_trio["base"],
        tuned=llama_trio["tuned"],
        scope=r"layers\.1\.mlp",
    )
    got, inst = load_dir(tmp_path / "o"), load_dir(llama_trio["instruct"])
    changed = {n for n in got if not torch.equal(got[n], inst[n])}
    assert changed == {n for n in got if "layers.1.mlp" in n} and len(changed) == 3


def test_bad_regex_scope_is_a_clear_error(llama_trio, tmp_path):
    with pytest.raises(ShadowFTError, match="valid regular expression"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"], scope="(")
    assert not (tmp_path / "o").exists()


def test_output_is_a_loadable_hf_model_with_instruct_files(qwen3_tied_sharded_trio, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trio = qwen3_tied_sharded_trio
    out = tmp_path / "grafted"
    graft(trio["instruct"], out, base=trio["base"], tuned=trio["tuned"], max_shard_size="30KB")
    assert (out / "model.safetensors.index.json").exists()
    for f in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
    ):
        assert (out / f).read_bytes() == (trio["instruct"] / f).read_bytes(), f
    prov = json.loads((out / PROVENANCE_NAME).read_text())
    assert prov["alpha"] == 1.0 and prov["scope"] == "projections" and prov["version"]
    assert set(prov["inputs"]) == {"instruct", "base", "tuned"}
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.tie_word_embeddings is True
    state = load_dir(out)
    for n, w in state.items():
        assert torch.equal(model.state_dict()[n], w), n
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "2 + 2"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 4 or tok.eos_token_id in gen[0].tolist()


def test_existing_output_is_refused_unless_overwrite(llama_trio, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        graft(llama_trio["instruct"], out, base=llama_trio["base"], tuned=llama_trio["tuned"])
    assert (out / "keep.txt").read_text() == "user data"
    graft(llama_trio["instruct"], out, base=llama_trio["base"], tuned=llama_trio["tuned"], overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_output_inside_an_input_is_refused(llama_trio):
    with pytest.raises(ShadowFTError, match="overwrite the input"):
        graft(
            llama_trio["instruct"],
            llama_trio["instruct"],
            base=llama_trio["base"],
            tuned=llama_trio["tuned"],
            overwrite=True,
        )
    assert Checkpoint(llama_trio["instruct"]).tensors


def test_exactly_one_update_source(llama_trio, tmp_path):
    with pytest.raises(ShadowFTError, match="exactly one update"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"])
    with pytest.raises(ShadowFTError, match="exactly one update"):
        graft(llama_trio["instruct"], tmp_path / "o", delta=llama_trio["base"], adapter=llama_trio["base"])
