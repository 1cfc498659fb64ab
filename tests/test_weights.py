"""Graft and delta against independent computations, scope behaviour, LoRA vs PEFT's own merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shadowft.checkpoint import Checkpoint
from shadowft.errors import CheckpointError, OutputExistsError, PairError, ShadowFTError
from shadowft.scope import in_scope
from shadowft.graft import PROVENANCE_NAME, DivergedError, extract_delta, graft, retarget_adapter
from tests.helpers import copy_dir, load_dir, resize_vocab


def expected_graft(trio, alpha: float, scope: str) -> dict[str, torch.Tensor]:
    b, i, t = load_dir(trio["base"]), load_dir(trio["instruct"]), load_dir(trio["tuned"])
    return {
        n: ((w.float() + alpha * (t[n].float() - b[n].float())).to(w.dtype) if in_scope(n, scope) else w)
        for n, w in i.items()
    }


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


def test_alpha_and_scope_all(llama_trio, tmp_path):
    graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"], alpha=0.5, scope="all")
    got, want = load_dir(tmp_path / "o"), expected_graft(llama_trio, 0.5, "all")
    inst = load_dir(llama_trio["instruct"])
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-7, msg=n)
        assert not torch.equal(got[n], inst[n]), f"{n} should be grafted under scope 'all'"


def test_regex_scope_touches_only_matching(llama_trio, tmp_path):
    graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"], scope=r"layers\.1\.mlp")
    got, inst = load_dir(tmp_path / "o"), load_dir(llama_trio["instruct"])
    changed = {n for n in got if not torch.equal(got[n], inst[n])}
    assert changed == {n for n in got if "layers.1.mlp" in n} and len(changed) == 3


def test_bad_regex_scope_is_a_clear_error(llama_trio, tmp_path):
    with pytest.raises(ShadowFTError, match="valid regular expression"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"], scope="(")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_delta_roundtrip_equals_direct_graft(llama_trio, tmp_path, dtype):
    rep = extract_delta(llama_trio["base"], llama_trio["tuned"], tmp_path / "delta", dtype=dtype)
    d, b, t = load_dir(tmp_path / "delta"), load_dir(llama_trio["base"]), load_dir(llama_trio["tuned"])
    assert rep.tensors == len(t)
    for n in t:
        want = (t[n].float() - b[n].float()).to(getattr(torch, dtype))
        assert torch.equal(d[n], want), n
    prov = json.loads((tmp_path / "delta" / PROVENANCE_NAME).read_text())
    assert prov["kind"] == "delta" and prov["inputs"]["base"]["fingerprint"]
    graft(llama_trio["instruct"], tmp_path / "via_delta", delta=tmp_path / "delta")
    graft(llama_trio["instruct"], tmp_path / "direct", base=llama_trio["base"], tuned=llama_trio["tuned"])
    a, c = load_dir(tmp_path / "via_delta"), load_dir(tmp_path / "direct")
    for n in a:
        if dtype == "float32":
            assert torch.equal(a[n], c[n]), n
        else:
            torch.testing.assert_close(a[n], c[n], rtol=1e-2, atol=1e-4)


def test_output_is_a_loadable_hf_model_with_instruct_files(qwen3_tied_sharded_trio, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trio = qwen3_tied_sharded_trio
    out = tmp_path / "grafted"
    graft(trio["instruct"], out, base=trio["base"], tuned=trio["tuned"], max_shard_size="30KB")
    assert (out / "model.safetensors.index.json").exists()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
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
    ids = tok.apply_chat_template([{"role": "user", "content": "2 + 2"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 4 or tok.eos_token_id in gen[0].tolist()


# ---------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------
def make_adapter(model_dir: Path, out: Path, **lora_kwargs) -> Path:
    """A real PEFT adapter on `model_dir` with non-zero random A and B (as after training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], init_lora_weights=False)
    cfg.update(lora_kwargs)
    peft_model = get_peft_model(model, LoraConfig(**cfg))
    peft_model.save_pretrained(out)
    return out


def peft_merged_state(instruct: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(instruct)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("extra", [{}, {"use_rslora": True, "rank_pattern": {"down_proj": 2}}], ids=["plain", "rslora-pattern"])
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


def test_lora_alpha_scales_update(llama_trio, tmp_path):
    adapter = make_adapter(llama_trio["base"], tmp_path / "adapter")
    graft(llama_trio["instruct"], tmp_path / "a1", adapter=adapter)
    graft(llama_trio["instruct"], tmp_path / "a2", adapter=adapter, alpha=2.0)
    inst, a1, a2 = load_dir(llama_trio["instruct"]), load_dir(tmp_path / "a1"), load_dir(tmp_path / "a2")
    n = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(a2[n] - inst[n], 2 * (a1[n] - inst[n]), rtol=1e-4, atol=1e-6)


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


def test_adapter_for_other_architecture_is_refused(llama_trio, tmp_path, tmp_path_factory):
    from shadowft.tiny import make_trio

    other = make_trio(tmp_path_factory.mktemp("wide"), arch="llama", hidden_size=48)
    adapter = make_adapter(other["base"], tmp_path / "adapter")
    with pytest.raises(PairError, match="does not fit"):
        graft(llama_trio["instruct"], tmp_path / "o", adapter=adapter)
    with pytest.raises(PairError, match="does not fit"):
        retarget_adapter(adapter, llama_trio["instruct"], tmp_path / "o2")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_dora_adapter_is_refused(llama_trio, tmp_path):
    adapter = make_adapter(llama_trio["base"], tmp_path / "adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="DoRA"):
        graft(llama_trio["instruct"], tmp_path / "o", adapter=adapter)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing left in --out
# ---------------------------------------------------------------------------------------------
def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temp dir left behind"


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


def test_vocab_difference_policy(llama_trio, tmp_path):
    bigger = resize_vocab(llama_trio["tuned"], tmp_path / "tuned_big", 5)
    base_big = resize_vocab(llama_trio["base"], tmp_path / "base_big", 5)
    # default scope does not graft embeddings: fine
    graft(llama_trio["instruct"], tmp_path / "ok", base=base_big, tuned=bigger)
    with pytest.raises(PairError, match="vocab sizes differ"):
        graft(llama_trio["instruct"], tmp_path / "o", base=base_big, tuned=bigger, scope="all")
    assert_nothing_written(tmp_path / "o")
    rep = graft(llama_trio["instruct"], tmp_path / "ov", base=base_big, tuned=bigger, scope="all", vocab_mismatch="overlap")
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
    assert load_dir(tmp_path / "converted").keys() == load_dir(llama_trio["tuned"]).keys()


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
        graft(llama_trio["instruct"], llama_trio["instruct"], base=llama_trio["base"], tuned=llama_trio["tuned"], overwrite=True)
    assert Checkpoint(llama_trio["instruct"]).tensors


def test_exactly_one_update_source(llama_trio, tmp_path):
    with pytest.raises(ShadowFTError, match="exactly one update"):
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"])
    with pytest.raises(ShadowFTError, match="exactly one update"):
        graft(llama_trio["instruct"], tmp_path / "o", delta=llama_trio["base"], adapter=llama_trio["base"])
