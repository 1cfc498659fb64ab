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
    graft(llama_trio["instruct"], out, base=llama_trio["base"], tuned=llama_trio["tuned"])
    (out / "note.txt").write_text("from the first graft")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        graft(llama_trio["instruct"], out, base=llama_trio["base"], tuned=llama_trio["tuned"], alpha=0.5)
    assert (out / "note.txt").exists()
    # an earlier output (it holds the provenance record) is what --overwrite replaces
    graft(llama_trio["instruct"], out, base=llama_trio["base"], tuned=llama_trio["tuned"], alpha=0.5, overwrite=True)
    assert not (out / "note.txt").exists() and (out / "model.safetensors").exists()
    assert json.loads((out / PROVENANCE_NAME).read_text())["alpha"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temp or trash dir left beside it


def test_overwrite_never_replaces_a_folder_shadowft_did_not_write(llama_trio, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExistsError, match="not written by shadowft") as ei:
        graft(llama_trio["instruct"], out, base=llama_trio["base"], tuned=llama_trio["tuned"], overwrite=True)
    assert "remove that directory yourself" in (ei.value.hint or "")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and len(list(tmp_path.iterdir())) == 1


def _inputs_inside(trio, root):
    import shutil

    for role in ("instruct", "base", "tuned"):
        shutil.copytree(trio[role], root / role)
    (root / "notes.txt").write_text("mine")
    return {role: root / role for role in ("instruct", "base", "tuned")}


@pytest.mark.parametrize("via_symlink", [False, True])
def test_output_that_contains_the_inputs_is_refused(llama_trio, tmp_path, via_symlink):
    """`--out v --overwrite` with the inputs in v/ used to replace v/ by the graft: every input gone."""
    from shadowft.graft import extract_delta

    v = tmp_path / "v"
    ins = _inputs_inside(llama_trio, v)
    (v / PROVENANCE_NAME).write_text("{}")  # even a dir that looks like an earlier output
    out = v
    if via_symlink:
        out = tmp_path / "link"
        out.symlink_to(v)
    with pytest.raises(ShadowFTError, match="contains the input"):
        graft(ins["instruct"], out, base=ins["base"], tuned=ins["tuned"], overwrite=True)
    with pytest.raises(ShadowFTError, match="contains the input"):
        extract_delta(ins["base"], ins["tuned"], out, overwrite=True)
    assert sorted(p.name for p in v.iterdir()) == ["base", "instruct", "notes.txt", PROVENANCE_NAME, "tuned"]
    assert Checkpoint(ins["instruct"]).tensors


def test_a_graft_never_publishes_over_one_that_appeared_meanwhile(llama_trio, tmp_path):
    """Two grafts to one --out without --overwrite: the second to finish fails, the first's output stays
    (before, both exited 0 and the later one silently replaced the other)."""
    out = tmp_path / "o"
    trio = llama_trio
    other: list = []

    def meanwhile(_name, _nbytes):  # while this graft writes, another one publishes the same --out
        if not other:
            other.append(graft(trio["instruct"], out, base=trio["base"], tuned=trio["tuned"], alpha=0.5))

    with pytest.raises(OutputExistsError, match="appeared while"):
        graft(trio["instruct"], out, base=trio["base"], tuned=trio["tuned"], alpha=1.0, progress=meanwhile)
    assert json.loads((out / PROVENANCE_NAME).read_text())["alpha"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # the loser's temp dir is gone


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
