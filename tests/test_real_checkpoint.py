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
