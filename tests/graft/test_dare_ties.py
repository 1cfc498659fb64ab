"""DARE and TIES on the update: against mergekit where it computes the same thing, by their
defining properties elsewhere, streamed in chunks, and the same for every update source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shadowft.graft import PROVENANCE_NAME, extract_delta, graft, make_method
from shadowft.graft.methods.dare import BLOCK, keep_mask
from shadowft.scope import in_scope
from tests.helpers import load_dir, make_adapter

mergekit_sparsify = pytest.importorskip("mergekit.sparsify")  # the bench extra


def _chunks(update: torch.Tensor, size: int, rows: int | None = None):
    """A re-readable stream of float32 chunks of `update` (flat, or row blocks of `rows` columns:
    the layouts the delta and LoRA sources produce)."""

    def stream():
        n = update.numel()
        step = size if rows is None else max(1, size // rows) * rows
        for s in range(0, n, step):
            e = min(n, s + step)
            w = update.reshape(-1)[s:e].clone()
            yield s, e, (w if rows is None else w.view(-1, rows))

    return stream


def _apply(
    method_name: str, update: torch.Tensor, settings: dict, size: int = 4096, rows: int | None = None, name: str = "t"
):
    """What the engine does for one tensor: `prepare`, then `combine` chunk by chunk, onto zeros (the
    result is the processed update) with alpha 1."""
    m = make_method(method_name, 1.0, settings)
    stream = _chunks(update, size, rows)
    m.prepare(name, update.numel(), stream)
    out = [m.combine(name, torch.zeros_like(w), w, 1.0, w, s).reshape(-1).clone() for s, _, w in stream()]
    return torch.cat(out).view(update.shape)


# ---------------------------------------------------------------------------------------------
# TIES
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.97, 1.0])
@pytest.mark.parametrize("size", [1000, 1 << 19])
def test_ties_equals_mergekit_magnitude(density, size):
    """mergekit's own `sparsify.magnitude` on the same update tensor (no equal magnitudes here, so the
    kept set is unique), whatever the chunking."""
    g = torch.Generator().manual_seed(0)
    update = torch.randn(48, 1001, generator=g)
    want = mergekit_sparsify.magnitude(update, density)
    assert torch.equal(_apply("ties", update, {"density": density}, size), want)
    assert torch.equal(_apply("ties", update, {"density": density}, size, rows=1001), want)


def test_ties_keeps_exactly_the_top_fraction_with_equal_magnitudes():
    """k = max(1, int(density * n)) entries are kept, each at least as large in magnitude as every
    dropped one; of the entries equal to the k-th magnitude the first in element order are kept
    (also when they straddle chunks); kept entries are unchanged (no rescale)."""
    g = torch.Generator().manual_seed(1)
    update = torch.randn(30011, generator=g)
    update[::5] = 0.25 * torch.sign(torch.randn(update[::5].shape, generator=g))  # many equal magnitudes
    split_ties = 0
    for density in (0.05, 0.2, 0.5, 0.7, 0.75, 0.9, 1e-9):
        got = _apply("ties", update, {"density": density}, size=777)
        k = max(1, int(density * update.numel()))
        kept = got != 0
        assert int(kept.sum()) == k
        assert torch.equal(got[kept], update[kept])
        if k < update.numel():
            assert update[kept].abs().min() >= update[~kept].abs().max()
        kth = update.abs().sort(descending=True).values[k - 1]
        ties = (update.abs() == kth).nonzero().flatten()
        n_kept_ties = int(kept[ties].sum())
        assert kept[ties[:n_kept_ties]].all() and not kept[ties[n_kept_ties:]].any()
        split_ties += 0 < n_kept_ties < len(ties)
    assert split_ties >= 2  # densities 0.7 and 0.75 fall inside the block of equal magnitudes 0.25


# ---------------------------------------------------------------------------------------------
# DARE
# ---------------------------------------------------------------------------------------------
def test_dare_drops_at_random_and_rescales_by_one_over_density():
    g = torch.Generator().manual_seed(2)
    update = torch.randn(64, 3001, generator=g)
    a = _apply("dare", update, {"density": 0.3, "seed": 5}, size=20000)
    kept = a != 0
    torch.testing.assert_close(a[kept], update[kept] / 0.3, rtol=0, atol=0)  # the kept entries, divided by density
    assert abs(kept.float().mean().item() - 0.3) < 0.01  # each kept with probability density
    # deterministic for a seed, whatever the chunking (flat or LoRA-like row blocks); another seed, another mask
    assert torch.equal(_apply("dare", update, {"density": 0.3, "seed": 5}, size=1 << 19), a)
    assert torch.equal(_apply("dare", update, {"density": 0.3, "seed": 5}, size=7 * 3001, rows=3001), a)
    b = _apply("dare", update, {"density": 0.3, "seed": 6}, size=20000)
    assert not torch.equal(b != 0, kept) and abs((b != 0).float().mean().item() - 0.3) < 0.01
    # the mask is the documented draw: uniforms per fixed block of (seed, tensor name, block)
    assert torch.equal(kept.reshape(-1), keep_mask(5, "t", 0, update.numel(), 0.3))
    assert update.numel() > 2 * BLOCK
    # and depends on the tensor's name: two tensors with the same update get different masks
    assert not torch.equal(_apply("dare", update, {"density": 0.3, "seed": 5}, name="u") != 0, kept)


def test_dare_mean_over_seeds_tends_to_the_update():
    """E[mask / density] = 1: the mean of S seeds' results is the update up to a relative error of
    sqrt((1 - d) / (d S)), which shrinks as seeds are added."""
    g = torch.Generator().manual_seed(3)
    update = torch.randn(20000, generator=g)
    density = 0.4
    total = torch.zeros_like(update)
    errors = {}
    for seed in range(1, 257):
        total += _apply("dare", update, {"density": density, "seed": seed}, size=1 << 19)
        if seed in (16, 256):
            errors[seed] = ((total / seed - update).norm() / update.norm()).item()
    for seeds, err in errors.items():
        expected = ((1 - density) / (density * seeds)) ** 0.5
        assert 0.9 * expected < err < 1.1 * expected, (seeds, err, expected)
    assert errors[256] < errors[16] / 3


def test_density_one_is_linear_and_mergekit():
    """At density 1 DARE keeps everything and TIES trims nothing: both are `linear`, and mergekit's
    `bernoulli` and `magnitude` return the update as it is."""
    update = torch.randn(5000, generator=torch.Generator().manual_seed(4))
    for method in ("dare", "ties"):
        assert torch.equal(_apply(method, update, {"density": 1.0}), update)
    assert torch.equal(mergekit_sparsify.bernoulli(update, 1.0), update)


# ---------------------------------------------------------------------------------------------
# through the graft: mergekit on the tiny trio, every source
# ---------------------------------------------------------------------------------------------
def test_ties_graft_equals_instruct_plus_mergekit_trim(llama_trio, tmp_path):
    """The streamed graft of the trio: Instruct + alpha * mergekit's magnitude(tuned - base) per tensor,
    bit for bit; the provenance records the method and its settings."""
    rep = graft(
        llama_trio["instruct"],
        tmp_path / "o",
        base=llama_trio["base"],
        tuned=llama_trio["tuned"],
        scope="all",
        alpha=0.5,
        method="ties",
        settings={"density": 0.3},
    )
    b, i, t = load_dir(llama_trio["base"]), load_dir(llama_trio["instruct"]), load_dir(llama_trio["tuned"])
    got = load_dir(tmp_path / "o")
    for n, w in i.items():
        trimmed = mergekit_sparsify.magnitude(t[n].float() - b[n].float(), 0.3)
        assert torch.equal(got[n], torch.add(w, trimmed, alpha=0.5)), n
    prov = json.loads((tmp_path / "o" / PROVENANCE_NAME).read_text())
    assert rep.graft_method == prov["graft_method"] == "ties"
    assert prov["method_settings"] == {"alpha": 0.5, "density": 0.3}
    assert rep.formula == "0.5 x ties(update, density 0.3)"


def _write_like(src: Path, dst: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A model dir with `src`'s config and these tensors."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors*", PROVENANCE_NAME))
    save_file({k: v.contiguous() for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("method,settings", [("dare", {"density": 0.5, "seed": 3}), ("ties", {"density": 0.25})])
def test_every_update_source_gives_the_same_graft(llama_trio, tmp_path, method, settings):
    """One update, three sources: a LoRA adapter (row blocks of B @ A), a delta dir (flat chunks) and a
    Base/tuned pair (tuned - base): the grafts are identical. The adapter's entries are small dyadic
    numbers and its scale is 1, so B @ A is exact and every source holds the very same update."""
    trio = llama_trio
    adapter = make_adapter(trio["base"], tmp_path / "adapter", lora_alpha=4)  # r 4: scale 1
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: torch.round(v * 8) / 16 for k, v in weights.items()}, adapter / "adapter_model.safetensors")
    graft(trio["instruct"], tmp_path / "lora", adapter=adapter, method=method, settings=settings)

    inst = load_dir(trio["instruct"])
    from shadowft.graft.lora import LoraAdapter

    lora = LoraAdapter(adapter)
    try:
        update = {t: lora.ckpt.tensor(m.b).float() @ lora.ckpt.tensor(m.a).float() for t, m in lora.modules.items()}
    finally:
        lora.close()
    assert all(in_scope(n, "projections") for n in update) and len(update) == sum(
        in_scope(n, "projections") for n in inst
    )
    zeros = {n: torch.zeros_like(w) for n, w in inst.items()}
    _write_like(trio["instruct"], tmp_path / "delta", update)
    _write_like(trio["base"], tmp_path / "zero-base", zeros)
    _write_like(trio["base"], tmp_path / "zero-tuned", {**zeros, **update})
    graft(trio["instruct"], tmp_path / "d", delta=tmp_path / "delta", method=method, settings=settings)
    graft(
        trio["instruct"],
        tmp_path / "p",
        base=tmp_path / "zero-base",
        tuned=tmp_path / "zero-tuned",
        method=method,
        settings=settings,
        pair_options=None,  # a zero Base is no twin of Instruct: the sigma check would refuse it
    )
    lora_out, delta_out, pair_out = (load_dir(tmp_path / x) for x in ("lora", "d", "p"))
    changed = 0
    for n in inst:
        assert torch.equal(lora_out[n], delta_out[n]) and torch.equal(delta_out[n], pair_out[n]), n
        changed += int((lora_out[n] != inst[n]).sum())
    total = sum(u.numel() for u in update.values())
    assert 0.2 * total < changed < 0.6 * total  # the update was sparsified, not dropped or kept whole


def test_extract_delta_then_dare_equals_pair(llama_trio, tmp_path):
    """A stored delta of the trio and the trio's pair: the same DARE graft."""
    extract_delta(llama_trio["base"], llama_trio["tuned"], tmp_path / "delta")
    kw = dict(method="dare", settings={"density": 0.5, "seed": 1}, scope="all")
    graft(llama_trio["instruct"], tmp_path / "d", delta=tmp_path / "delta", **kw)
    graft(llama_trio["instruct"], tmp_path / "p", base=llama_trio["base"], tuned=llama_trio["tuned"], **kw)
    d, p = load_dir(tmp_path / "d"), load_dir(tmp_path / "p")
    assert all(torch.equal(d[n], p[n]) for n in d)


# ---------------------------------------------------------------------------------------------
# end to end: `shadowft run` with graft.method dare on the embedded family
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_with_dare_graft_end_to_end(prefect_env, zoo_family):
    """The demo config with graft.method dare: the flow completes, the graft stage ran DARE with the
    config's settings, and the report scores the DARE-grafted model."""
    from shadowft.config import load_config
    from tests.test_pipeline import run_flow

    fam = zoo_family
    example = Path(__file__).resolve().parents[2] / "examples" / "toy.yaml"
    cfg = load_config(
        example,
        [
            f"pair.base={fam.base}",
            f"pair.instruct={fam.instruct}",
            f"data.sources=[{fam.data / 'domain.jsonl'}]",
            "data.max_samples=64",
            "train.max_steps=8",
            "train.lr=2e-3",
            "eval.limit=10",
            "baselines=[instruct]",
            "graft.method=dare",
            "graft.dare.density=0.5",
            "graft.dare.seed=7",
        ],
    )
    flow_state, states, result = run_flow(cfg)
    assert flow_state == "Completed", states
    index = json.loads((Path(result["folder"]) / "artifacts.json").read_text())["artifacts"]
    graft_art = next(Path(a["path"]) for name, a in index.items() if name.startswith("graft"))
    info = json.loads((graft_art / "manifest.json").read_text())["graft"]
    assert info["graft_method"] == "dare" and info["method_settings"] == {"alpha": 1.0, "density": 0.5, "seed": 7}
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    assert list(summary["scores"]) == ["instruct", "shadow-ft"]
