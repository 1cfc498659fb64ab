"""Chat Vector (Huang et al., 2024) is Shadow-FT full at alpha 1 with scope `all`.

Chat Vector adds Instruct's chat ability to a fine-tuned Base: tuned Base + (Instruct - Base).
Shadow-FT adds the Base update to Instruct: Instruct + alpha * (tuned Base - Base). At alpha 1 the two
are the same sum, so the graft with scope `all` must give the chat-vector model tensor by tensor (up to
float32 rounding: the terms are added in another order). With the published scope `projections` the
two part on every other tensor (norms, embeddings, lm_head): there Shadow-FT keeps Instruct as is while
Chat Vector also carries the tuning's change of that tensor.
"""

from __future__ import annotations

import json

import pytest
import torch

from shadowft.config import DataConfig, TrainConfig
from shadowft.data import prepare_dataset
from shadowft.graft import graft
from shadowft.train import train_model
from tests.helpers import load_dir

# Written out rather than imported from shadowft.scope: the expectation stays independent of the code.
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tuned_base(llama_trio, tmp_path_factory):
    """Base fully fine-tuned a few real steps (every tensor trainable: norms and embeddings move too)."""
    root = tmp_path_factory.mktemp("chat-vector")
    rows = [
        {"messages": [{"role": "user", "content": f"{a} + {b}?"}, {"role": "assistant", "content": str(a + b)}]}
        for a in range(6)
        for b in range(4)
    ]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_dataset(DataConfig(sources=[str(root / "d.jsonl")], max_length=64), llama_trio["instruct"], root / "data")
    cfg = TrainConfig(method="full", max_steps=3, batch_size=4, grad_accum=1, save_steps=100, lr=1e-3)
    train_model(llama_trio["base"], root / "data", cfg, root / "tuned", root / "work")
    return root / "tuned"


def chat_vector(trio, tuned) -> dict[str, torch.Tensor]:
    """Huang et al.'s model, computed on its own: tuned Base + (Instruct - Base), float32, every tensor."""
    b, i, t = load_dir(trio["base"]), load_dir(trio["instruct"]), load_dir(tuned)
    assert b.keys() == i.keys() == t.keys()
    return {n: t[n].float() + (i[n].float() - b[n].float()) for n in i}


def test_shadow_full_alpha_1_scope_all_is_chat_vector(llama_trio, tuned_base, tmp_path):
    report = graft(
        llama_trio["instruct"], tmp_path / "all", base=llama_trio["base"], tuned=tuned_base, alpha=1.0, scope="all"
    )
    got, want = load_dir(tmp_path / "all"), chat_vector(llama_trio, tuned_base)
    assert got.keys() == want.keys() and report.copied == 0
    base, tuned = load_dir(llama_trio["base"]), load_dir(tuned_base)
    for n in want:
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-6, msg=n)
    # the training moved norms, embeddings and lm_head too: the check above covered real updates there
    moved = {n for n in base if not torch.equal(base[n], tuned[n])}
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= moved, moved


def test_projections_scope_differs_from_chat_vector_only_off_projections(llama_trio, tuned_base, tmp_path):
    graft(llama_trio["instruct"], tmp_path / "proj", base=llama_trio["base"], tuned=tuned_base, alpha=1.0)
    got, want = load_dir(tmp_path / "proj"), chat_vector(llama_trio, tuned_base)
    inst, base, tuned = load_dir(llama_trio["instruct"]), load_dir(llama_trio["base"]), load_dir(tuned_base)
    off = []
    for n in want:
        if any(p in n for p in PROJECTION_NAMES):
            torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-6, msg=n)
        else:
            # Shadow-FT keeps Instruct's tensor; Chat Vector adds the tuning's change to it
            assert torch.equal(got[n], inst[n]), n
            torch.testing.assert_close(want[n] - got[n], tuned[n] - base[n], rtol=1e-5, atol=1e-6, msg=n)
            off.append(n)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= set(off)
    assert any("layernorm" in n for n in off)
    differs = {n for n in want if not torch.allclose(got[n], want[n], rtol=1e-6, atol=1e-6)}
    assert differs and differs <= set(off), differs
