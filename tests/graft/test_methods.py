"""Graft methods: each against an independent computation with safetensors and torch."""

from __future__ import annotations

import json
import re

import pytest
import torch

from shadowft.errors import ShadowFTError
from shadowft.graft import PROVENANCE_NAME, extract_delta, get_method, graft, method_names
from shadowft.scope import in_scope
from tests.helpers import assert_nothing_written, expected_graft, load_dir, make_adapter


def test_alpha_and_scope_all(llama_trio, tmp_path):
    graft(
        llama_trio["instruct"],
        tmp_path / "o",
        base=llama_trio["base"],
        tuned=llama_trio["tuned"],
        alpha=0.5,
        scope="all",
    )
    got, want = load_dir(tmp_path / "o"), expected_graft(llama_trio, 0.5, "all")
    inst = load_dir(llama_trio["instruct"])
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-7, msg=n)
        assert not torch.equal(got[n], inst[n]), f"{n} should be grafted under scope 'all'"


def test_lora_alpha_scales_update(llama_trio, tmp_path):
    adapter = make_adapter(llama_trio["base"], tmp_path / "adapter")
    graft(llama_trio["instruct"], tmp_path / "a1", adapter=adapter)
    graft(llama_trio["instruct"], tmp_path / "a2", adapter=adapter, alpha=2.0)
    inst, a1, a2 = load_dir(llama_trio["instruct"]), load_dir(tmp_path / "a1"), load_dir(tmp_path / "a2")
    n = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(a2[n] - inst[n], 2 * (a1[n] - inst[n]), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# per_module
# ---------------------------------------------------------------------------------------------
# Powers of two: alpha * update is exact, so the result is bit-identical however torch fuses it.
RULES = {r"q_proj|k_proj|v_proj|o_proj": 0.5, "mlp": 2.0, r"layers\.1\.": 0.25}


def expected_per_module(trio, rules: dict[str, float], alpha: float, scope: str) -> dict[str, torch.Tensor]:
    """Independent computation: safetensors' loader, first matching regex (re.search) wins."""
    b, i, t = load_dir(trio["base"]), load_dir(trio["instruct"]), load_dir(trio["tuned"])
    out = {}
    for n, w in i.items():
        a = next((v for rx, v in rules.items() if re.search(rx, n)), alpha)
        out[n] = (w.float() + a * (t[n].float() - b[n].float())).to(w.dtype) if in_scope(n, scope) else w
    return out


@pytest.mark.parametrize("trio_name", ["llama_trio", "bf16_trio"])
def test_per_module_matches_independent_computation(trio_name, request, tmp_path):
    trio = request.getfixturevalue(trio_name)
    rep = graft(
        trio["instruct"],
        tmp_path / "o",
        base=trio["base"],
        tuned=trio["tuned"],
        scope="all",
        method="per_module",
        settings={"alpha_by_module": RULES},
    )
    got, want = load_dir(tmp_path / "o"), expected_per_module(trio, RULES, 1.0, "all")
    assert got.keys() == want.keys()
    for n in want:
        assert got[n].dtype == want[n].dtype and torch.equal(got[n].view(torch.uint8), want[n].view(torch.uint8)), n
    # first match wins: layers.1.mlp.* take the mlp rule (2.0), not the later layers.1 rule (0.25)
    inst, lin = load_dir(trio["instruct"]), expected_graft(trio, 2.0, "all")
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], lin["model.layers.1.mlp.up_proj.weight"])
    assert not torch.equal(got["model.layers.1.input_layernorm.weight"], inst["model.layers.1.input_layernorm.weight"])
    assert rep.graft_method == "per_module" and rep.method == "base-tuned" and rep.warnings == []
    prov = json.loads((tmp_path / "o" / PROVENANCE_NAME).read_text())
    assert prov["graft_method"] == "per_module" and list(prov["method_settings"]["alpha_by_module"].items()) == list(
        RULES.items()
    )


def test_per_module_works_with_every_source(llama_trio, tmp_path):
    """The method is independent of where the update comes from: a delta and a LoRA adapter."""
    trio, rules = llama_trio, {"self_attn": 0.5}
    extract_delta(trio["base"], trio["tuned"], tmp_path / "delta")
    graft(
        trio["instruct"],
        tmp_path / "d",
        delta=tmp_path / "delta",
        method="per_module",
        settings={"alpha_by_module": rules},
    )
    got, want = load_dir(tmp_path / "d"), expected_per_module(trio, rules, 1.0, "projections")
    for n in want:
        assert torch.equal(got[n], want[n]), n
    adapter = make_adapter(trio["base"], tmp_path / "adapter")
    graft(
        trio["instruct"],
        tmp_path / "l",
        adapter=adapter,
        method="per_module",
        settings={"alpha_by_module": rules},
        alpha=2.0,
    )
    graft(trio["instruct"], tmp_path / "l_half", adapter=adapter, alpha=0.5)
    graft(trio["instruct"], tmp_path / "l_two", adapter=adapter, alpha=2.0)
    got, half, two = load_dir(tmp_path / "l"), load_dir(tmp_path / "l_half"), load_dir(tmp_path / "l_two")
    for n in got:
        assert torch.equal(got[n], half[n] if "self_attn" in n else two[n]), n


def test_per_module_rule_matching_nothing_is_a_warning(llama_trio, tmp_path):
    rep = graft(
        llama_trio["instruct"],
        tmp_path / "o",
        base=llama_trio["base"],
        tuned=llama_trio["tuned"],
        method="per_module",
        settings={"alpha_by_module": {"mlp": 0.5, "experts": 2.0}},
    )
    assert rep.warnings == ["alpha_by_module rule 'experts' matches no grafted tensor"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "tie"}, "unknown graft method 'tie' (did you mean 'ties'?)"),
        (
            {"method": "linear", "settings": {"alpha_by_module": {"mlp": 0.5}}},
            "alpha_by_module: not a setting of this method",
        ),
        ({"settings": {"density": 0.5}}, "density: not a setting of this method"),
        ({"method": "per_module"}, "alpha_by_module: give at least one REGEX=ALPHA rule"),
        ({"method": "per_module", "settings": {"alpha_by_module": {"(": 0.5}}}, "not a valid regular expression"),
        ({"method": "per_module", "settings": {"alpha_by_module": {"mlp": float("nan")}}}, "must be a finite number"),
        ({"method": "dare", "settings": {"density": 0}}, "density: Input should be greater than 0"),
        ({"method": "ties", "settings": {"density": 1.5}}, "density: Input should be less than or equal to 1"),
        ({"method": "dare", "settings": {"seed": -1}}, "seed: Input should be greater than or equal to 0"),
        ({"alpha": float("inf")}, "alpha must be a finite number"),
    ],
)
def test_bad_method_settings_are_clear_errors(llama_trio, tmp_path, kwargs, message):
    with pytest.raises(ShadowFTError, match=re.escape(message)) as exc:
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"], **kwargs)
    if "unknown" in message:
        assert exc.value.hint and all(m in exc.value.hint for m in ("linear", "per_module", "dare", "ties"))
    assert_nothing_written(tmp_path / "o")


def test_registry_names_every_method():
    assert method_names() == ["linear", "per_module", "dare", "ties"]
    for name in method_names():
        cls = get_method(name)
        assert cls.name == name and cls.summary
    with pytest.raises(ShadowFTError, match="known graft methods: dare, linear, per_module, ties"):
        get_method("slerp")


def test_graft_stage_runs_the_configured_method(llama_trio, tmp_path):
    """The pipeline's graft stage passes the config's per-module alphas to the graft, and keys on them."""
    from shadowft.config import GraftConfig
    from shadowft.stages import graft_spec, run
    from shadowft.store import Artifact, ArtifactStore

    extract_delta(llama_trio["base"], llama_trio["tuned"], tmp_path / "d" / "delta")
    update = Artifact(stage="delta", key="k", path=tmp_path / "d", build_id="b")
    store = ArtifactStore(tmp_path / "store")
    cfg = GraftConfig(per_module={"alpha_by_module": {"self_attn": 0.5}})
    art, built = run(graft_spec(cfg, llama_trio["instruct"], update), store)
    assert built
    prov = json.loads((art.path / "model" / PROVENANCE_NAME).read_text())
    assert prov["graft_method"] == "per_module" and prov["method_settings"]["alpha_by_module"] == {"self_attn": 0.5}
    got, want = load_dir(art.path / "model"), expected_per_module(llama_trio, {"self_attn": 0.5}, 1.0, "projections")
    assert all(torch.equal(got[n], want[n]) for n in want)
    assert (
        run(graft_spec(GraftConfig(alpha_by_module={"self_attn": 0.5}), llama_trio["instruct"], update), store)[
            1
        ]  # old spelling
        is False
    )
    other, built = run(graft_spec(GraftConfig(), llama_trio["instruct"], update), store)
    assert built and other.key != art.key
