"""sigma against a hand computation; the pair check refuses what cannot be grafted."""

from __future__ import annotations

import statistics

import pytest
import torch

from shadowft.errors import PairError
from shadowft.pair import check_pair, similarity, tensor_sigma
from shadowft.tiny import make_trio, random_model, save_model, tiny_config
from tests.helpers import load_dir, resize_vocab


def test_tensor_sigma_by_hand():
    a = torch.tensor([1.0, -2.0, 3.0])
    b = torch.tensor([1.0, -1.0, 1.0])
    # sum|a-b| = 0 + 1 + 2 = 3; sum|a| + sum|b| = 6 + 3 = 9
    assert tensor_sigma(a, b) == pytest.approx(3 / 9)
    assert tensor_sigma(a.bfloat16(), a.bfloat16()) == 0.0
    assert tensor_sigma(torch.zeros(3), torch.zeros(3)) == 0.0


def test_similarity_summary_matches_independent_computation(llama_trio):
    rep = similarity(llama_trio["base"], llama_trio["instruct"])
    a, b = load_dir(llama_trio["base"]), load_dir(llama_trio["instruct"])
    per = {n: ((a[n] - b[n]).abs().sum() / (a[n].abs().sum() + b[n].abs().sum())).item() for n in a}
    layer = [v for n, v in per.items() if n.startswith("model.layers.")]
    assert rep.n_summarised == len(layer) == 18
    assert rep.mean == pytest.approx(sum(layer) / len(layer), rel=1e-5)
    assert rep.median == pytest.approx(statistics.median(layer), rel=1e-5)
    assert rep.max == pytest.approx(max(layer), rel=1e-5) and rep.min == pytest.approx(min(layer), rel=1e-5)
    for n, v in per.items():
        assert rep.tensors[n] == pytest.approx(v, rel=1e-5)
    assert 0.01 < rep.mean < 0.06  # the tiny trio sits where real pairs do


def test_good_pair_passes(qwen3_tied_sharded_trio):
    rep = check_pair(qwen3_tied_sharded_trio["base"], qwen3_tied_sharded_trio["instruct"])
    assert rep.ok and not rep.errors and rep.sigma.mean < 0.06
    assert rep.tied_embeddings == {"base": True, "instruct": True}


def test_unrelated_models_are_refused_unless_forced(llama_trio, tmp_path):
    other = save_model(random_model(tiny_config("llama", vocab_size=383), seed=123), None, tmp_path / "other")
    with pytest.raises(PairError, match="too far apart"):
        check_pair(other, llama_trio["instruct"])
    rep = check_pair(other, llama_trio["instruct"], force=True)
    assert rep.sigma.mean > 0.5 and any("forced" in w for w in rep.warnings)


def test_structural_differences_are_listed(llama_trio, tmp_path_factory):
    qwen = make_trio(tmp_path_factory.mktemp("qp"), arch="qwen3", tied=True)
    with pytest.raises(PairError) as exc:
        check_pair(qwen["base"], llama_trio["instruct"])
    msg = str(exc.value)
    assert "model_type" in msg and "architectures" in msg


def test_vocab_and_tie_differences_are_reported(llama_trio, tmp_path):
    big = resize_vocab(llama_trio["base"], tmp_path / "big", 3)
    rep = check_pair(big, llama_trio["instruct"])
    assert rep.ok and any("vocab_size" in w for w in rep.warnings)
    assert rep.vocab_size == {"base": 386, "instruct": 383}
    with pytest.raises(PairError, match="embed_tokens"):
        check_pair(big, llama_trio["instruct"], scope="all")
