"""The pair check on every graft path (issue 15): a model of the right shape that is not the
update's Base's twin is refused before anything is written, with a hint in the caller's terms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from shadowft.errors import PairError
from shadowft.graft import PROVENANCE_NAME, extract_delta, graft
from shadowft.pair import PairOptions
from shadowft.tiny import random_model, save_model
from tests.helpers import assert_nothing_written, make_adapter
from tests.test_cli_weights import run


@pytest.fixture(scope="module")
def random_instruct(llama_trio, tmp_path_factory) -> Path:
    """Instruct's config and tokenizer, random weights: sigma(base, it) is about 0.5."""
    cfg = AutoConfig.from_pretrained(llama_trio["instruct"])
    tok = AutoTokenizer.from_pretrained(llama_trio["instruct"])
    return save_model(random_model(cfg, seed=1234), tok, tmp_path_factory.mktemp("rand") / "random")


@pytest.fixture(scope="module")
def delta_dir(llama_trio, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("delta") / "delta"
    extract_delta(llama_trio["base"], llama_trio["tuned"], out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(llama_trio, tmp_path_factory) -> Path:
    return make_adapter(llama_trio["base"], tmp_path_factory.mktemp("adapter") / "adapter")


def test_pair_source_refuses_a_random_instruct_then_force_grafts_with_a_warning(llama_trio, random_instruct, tmp_path):
    with pytest.raises(PairError, match=r"sigma\(base, instruct\) = 0\.[3-9]") as err:
        graft(random_instruct, tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"])
    assert "--force" in (err.value.hint or "") and "--max-sigma" in (err.value.hint or "")
    assert_nothing_written(tmp_path / "o")
    rep = graft(
        random_instruct,
        tmp_path / "f",
        base=llama_trio["base"],
        tuned=llama_trio["tuned"],
        pair_options=PairOptions(force=True),
    )
    assert any("(forced)" in w for w in rep.warnings)
    assert rep.pair_check["checked"] == "structure+sigma" and rep.pair_check["sigma"] > 0.3


def test_real_pair_records_its_sigma(llama_trio, tmp_path):
    rep = graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"])
    assert rep.pair_check["checked"] == "structure+sigma" and rep.pair_check["sigma"] < 0.06
    prov = json.loads((tmp_path / "o" / PROVENANCE_NAME).read_text())
    assert prov["pair_check"]["sigma"] == rep.pair_check["sigma"]


def test_delta_records_its_base_and_refuses_a_random_instruct(llama_trio, random_instruct, delta_dir, tmp_path):
    prov = json.loads((delta_dir / PROVENANCE_NAME).read_text())
    structure = prov["base_structure"]
    assert structure["config"]["model_type"] == "llama" and "vocab_size" in structure["config"]
    vocab, hidden = structure["config"]["vocab_size"], structure["config"]["hidden_size"]
    assert structure["tensors"]["model.embed_tokens.weight"] == [vocab, hidden]
    assert prov["inputs"]["base"]["fingerprint"]
    # the recorded Base dir is still there and unchanged: sigma is checked without --base
    with pytest.raises(PairError, match="sigma"):
        graft(random_instruct, tmp_path / "o", delta=delta_dir)
    assert_nothing_written(tmp_path / "o")
    # and with --base given explicitly
    with pytest.raises(PairError, match="sigma"):
        graft(random_instruct, tmp_path / "o", delta=delta_dir, base=llama_trio["base"])
    rep = graft(llama_trio["instruct"], tmp_path / "ok", delta=delta_dir)
    assert rep.pair_check["checked"] == "structure+sigma" and rep.pair_check["sigma"] < 0.06


def test_delta_with_a_wrong_base_or_without_its_base(llama_trio, random_instruct, delta_dir, tmp_path):
    with pytest.raises(PairError, match="not the Base this delta was taken from"):
        graft(llama_trio["instruct"], tmp_path / "o", delta=delta_dir, base=random_instruct)
    assert_nothing_written(tmp_path / "o")
    # the delta moved to another machine: its Base is not at hand, only the structure is checked
    moved = shutil.copytree(delta_dir, tmp_path / "moved")
    prov = json.loads((moved / PROVENANCE_NAME).read_text())
    prov["inputs"]["base"]["path"] = str(tmp_path / "gone")
    (moved / PROVENANCE_NAME).write_text(json.dumps(prov))
    rep = graft(random_instruct, tmp_path / "s", delta=moved)
    assert rep.pair_check["checked"] == "structure"
    assert any("pass --base BASE" in w for w in rep.warnings)


def test_delta_structure_mismatch_is_refused(delta_dir, qwen3_tied_sharded_trio, tmp_path):
    with pytest.raises(PairError, match="architecture|structure"):
        graft(qwen3_tied_sharded_trio["instruct"], tmp_path / "o", delta=delta_dir, scope="all")
    assert_nothing_written(tmp_path / "o")


def test_adapter_with_local_base_checks_sigma(llama_trio, random_instruct, adapter_dir, tmp_path):
    with pytest.raises(PairError, match=r"sigma\(adapter base, instruct\)"):
        graft(random_instruct, tmp_path / "o", adapter=adapter_dir)
    assert_nothing_written(tmp_path / "o")
    rep = graft(llama_trio["instruct"], tmp_path / "ok", adapter=adapter_dir)
    assert rep.pair_check["checked"] == "structure+sigma" and rep.pair_check["sigma"] < 0.06


def test_adapter_with_hub_base_says_only_shapes_were_checked(random_instruct, adapter_dir, tmp_path):
    hub = shutil.copytree(adapter_dir, tmp_path / "hub_adapter")
    cfg = json.loads((hub / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "example-org/Example-7B-Base"
    (hub / "adapter_config.json").write_text(json.dumps(cfg))
    rep = graft(random_instruct, tmp_path / "o", adapter=hub)
    assert rep.pair_check["checked"] == "shapes"
    assert any("only the adapter's shapes" in w for w in rep.warnings)


@pytest.mark.slow
def test_cli_graft_refuses_random_instruct_and_names_its_options(llama_trio, random_instruct, adapter_dir, tmp_path):
    r = run("graft", "--instruct", random_instruct, "--base", llama_trio["base"], "--tuned", llama_trio["tuned"],
            "--out", tmp_path / "o")  # fmt: skip
    assert r.returncode != 0 and "sigma" in r.stderr and "--force" in r.stderr and "pair.force" not in r.stderr
    assert not (tmp_path / "o").exists()
    r = run("graft", "--instruct", random_instruct, "--adapter", adapter_dir, "--out", tmp_path / "a")
    assert r.returncode != 0 and "sigma" in r.stderr
    r = run("graft", "--instruct", random_instruct, "--adapter", adapter_dir, "--out", tmp_path / "a", "--as-adapter")
    assert r.returncode != 0 and "sigma" in r.stderr and not (tmp_path / "a").exists()
    r = run("graft", "--instruct", random_instruct, "--adapter", adapter_dir, "--out", tmp_path / "a",
            "--max-sigma", "0.9")  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_pipeline_hint_names_the_config_key(llama_trio, random_instruct):
    from shadowft.pair import check_pair

    with pytest.raises(PairError) as err:
        check_pair(llama_trio["base"], random_instruct, option_names=("pair.max_sigma", "pair.force"))
    assert "pair.force" in (err.value.hint or "") and "--force" not in (err.value.hint or "")


def test_cli_regrafts_a_stored_update_onto_a_new_instruct_release(llama_trio, delta_dir, adapter_dir, tmp_path):
    """A new Instruct release of the same Base (here: Instruct plus a small deterministic change)
    takes the stored delta and the adapter without training again; the checks pass and are recorded."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.helpers import load_dir

    new = shutil.copytree(llama_trio["instruct"], tmp_path / "instruct-v2")
    gen = torch.Generator().manual_seed(3)
    for f in new.glob("*.safetensors"):
        state = {n: w + 0.002 * torch.randn(w.shape, generator=gen) for n, w in load_file(f).items()}
        save_file(state, f, metadata={"format": "pt"})
    r = run("graft", "--instruct", new, "--delta", delta_dir, "--base", llama_trio["base"], "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    prov = json.loads((tmp_path / "d" / PROVENANCE_NAME).read_text())
    assert prov["pair_check"]["checked"] == "structure+sigma" and prov["pair_check"]["sigma"] < 0.06
    got, inst, delta = load_dir(tmp_path / "d"), load_dir(new), load_dir(delta_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(got[name], inst[name] + delta[name])
    r = run("graft", "--instruct", new, "--adapter", adapter_dir, "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "a" / PROVENANCE_NAME).read_text())["pair_check"]["checked"] == "structure+sigma"
