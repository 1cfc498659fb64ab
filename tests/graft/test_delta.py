"""`extract_delta`: exact tuned - base, and grafting it equals grafting the pair."""

from __future__ import annotations

import json

import pytest
import torch

from shadowft.graft import PROVENANCE_NAME, extract_delta, graft
from tests.helpers import load_dir


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
