"""A real published instruct checkpoint (SmolLM2-135M-Instruct, from GGUF) through the eval stage."""

from __future__ import annotations

import json

import pytest

from shadowft.evaluate import evaluate_model

pytestmark = pytest.mark.slow


def test_smollm2_converted_dir_is_a_normal_model_dir(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(smollm2_dir)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert cfg.model_type == "llama" and cfg.tie_word_embeddings
    assert len(tok) == 49152 and tok.chat_template and "<|im_start|>" in tok.chat_template
    assert (smollm2_dir / "model.safetensors").is_file()


def test_smollm2_toy_suites_with_its_chat_template(smollm2_dir, tmp_path):
    res = evaluate_model(smollm2_dir, ["toy-math", "toy-reasoning"], tmp_path, limit=3)
    assert res.chat_template is True
    assert res.suites["toy-math"].n == 3 and res.suites["toy-reasoning"].n == 3
    row = json.loads((tmp_path / "samples_toy_math.jsonl").read_text().splitlines()[0])
    prompt = row["arguments"][0][0]
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert row["resps"][0][0].strip()  # a real model answers with text


def test_smollm2_pair_check_and_graft_with_a_known_delta(smollm2_dir, tmp_path):
    """Weight surgery on a real checkpoint: 49k vocab, tied embeddings, a real chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shadowft.checkpoint import Checkpoint, OutTensor, ShardedWriter
    from shadowft.graft import graft
    from shadowft.pair import check_pair, similarity

    report = check_pair(smollm2_dir, smollm2_dir)
    assert report.ok and report.sigma.mean == 0.0 and report.tied_embeddings == {"base": True, "instruct": True}

    # A synthetic, known delta on every projection of layers 0-3 (a tuned-Base update stand-in).
    src = Checkpoint(smollm2_dir)
    names = [n for n in src.tensors if n.startswith(tuple(f"model.layers.{i}." for i in range(4))) and "_proj" in n]
    g = torch.Generator().manual_seed(0)
    deltas = {n: 1e-3 * torch.randn(src.tensors[n].shape, generator=g) for n in names}
    writer = ShardedWriter(tmp_path / "delta", [OutTensor(n, torch.float32, tuple(d.shape)) for n, d in deltas.items()])
    (tmp_path / "delta").mkdir()
    with writer.open_shard(0):
        for n, d in deltas.items():
            writer.write(n, d.reshape(-1))

    out = tmp_path / "grafted"
    rep = graft(smollm2_dir, out, delta=tmp_path / "delta", alpha=0.5, max_shard_size="200MB")
    assert rep.grafted == len(names) and (out / "model.safetensors.index.json").exists()
    res = Checkpoint(out)
    for n in src.tensors:
        want = src.tensor(n).float() + 0.5 * deltas[n] if n in deltas else src.tensor(n)
        got = res.tensor(n)
        assert got.dtype == src.tensors[n].dtype
        if n in deltas:
            torch.testing.assert_close(got.float(), want.to(got.dtype).float(), rtol=0, atol=0)
        else:
            assert torch.equal(got, want), f"{n} should be copied bit-exactly"
    assert "lm_head.weight" not in res.tensors  # still tied

    sigma = similarity(smollm2_dir, out)
    assert 0 < sigma.mean < 0.01
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    text = tok.decode(model.generate(**ids, max_new_tokens=8, do_sample=False)[0][ids["input_ids"].shape[1] :])
    assert text.strip()  # the grafted real model still talks
