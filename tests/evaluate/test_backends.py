"""The evaluation backend seam: the registry and the backend recorded in the results."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowft.config import EvalConfig, RunConfig
from shadowft.errors import ShadowFTError
from shadowft.evaluate import evaluate_model, load_result
from shadowft.evaluate.backends import BACKENDS, EvalBackend, get_backend
from shadowft.evaluate.backends.hf import HFBackend


def test_backend_registry():
    assert isinstance(get_backend("hf"), HFBackend) and set(BACKENDS) == {"hf", "vllm", "hf-multimodal", "vllm-vlm"}
    assert all(issubclass(b, EvalBackend) for b in BACKENDS.values())
    with pytest.raises(ShadowFTError, match="unknown evaluation backend 'vlm'") as err:
        get_backend("vlm")
    assert "hf" in err.value.hint and "vllm" in err.value.hint


def test_unknown_backend_fails_before_the_model_loads(tmp_path):
    with pytest.raises(ShadowFTError, match="unknown evaluation backend"):
        evaluate_model(Path("/nonexistent/model"), ["toy-math"], tmp_path, backend="nope")


def test_backend_is_config_and_recorded(llama_trio, tmp_path):
    assert EvalConfig().backend == "hf" and RunConfig().eval.cache_view()["backend"] == "hf"
    res = evaluate_model(llama_trio["instruct"], ["toy-math"], tmp_path, limit=2)
    assert res.backend == "hf" and load_result(tmp_path / "results.json").backend == "hf"
