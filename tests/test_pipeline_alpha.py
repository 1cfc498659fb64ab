"""graft.alpha auto and re-grafting onto a new Instruct release, on the embedded family, through
real Prefect runs (issue 15)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from shadowft.config import load_config
from shadowft.graft.select import validation_loss
from shadowft.pair import similarity
from tests.test_pipeline import run_flow

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "toy.yaml"
GRID = [0.5, 1.0, 2.0]


def family_config(fam, instruct: Path, *overrides: str):
    return load_config(
        EXAMPLE,
        [
            f"pair.base={fam.base}",
            f"pair.instruct={instruct}",
            f"data.sources=[{fam.data / 'domain.jsonl'}]",
            "data.max_samples=120",
            "data.validation_ratio=0.2",
            "train.max_steps=12",
            "train.lr=2e-3",
            "eval.suites=[toy-domain,toy-math]",
            "eval.limit=8",
            "baselines=[instruct]",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def second_instruct(zoo_family, tmp_path_factory) -> Path:
    """A second Instruct release derived from the embedded one: the same files (tokenizer, chat
    template, config), weights moved by a small deterministic perturbation."""
    out = shutil.copytree(zoo_family.instruct, tmp_path_factory.mktemp("instruct2") / "instruct-v2")
    gen = torch.Generator().manual_seed(2)
    for f in sorted(out.glob("*.safetensors")):
        state = load_file(f)
        for name, w in state.items():
            if w.dtype.is_floating_point and w.dim() == 2:
                noise = torch.randn(w.shape, generator=gen, dtype=torch.float32)
                state[name] = (w.float() + 0.01 * w.float().abs().mean() * noise).to(w.dtype)
        save_file(state, f, metadata={"format": "pt"})
    return out


def test_alpha_auto_chooses_from_measurements_then_is_cached(prefect_env, zoo_family):
    cfg = family_config(
        zoo_family,
        zoo_family.instruct,
        "graft.alpha=auto",
        f"graft.alpha_grid={GRID}",
        "graft.retention={toy-math: 10}",
    )
    flow_state, states, result = run_flow(cfg)
    assert flow_state == "Completed", states
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    sel = summary["alpha_selection"]
    cands = {c["alpha"]: c for c in sel["candidates"]}
    assert sorted(cands) == GRID
    # the rule, recomputed from the measurements: argmin loss among those within 10 points on toy-math
    inst = sel["instruct_scores"]["toy-math"]
    ok = [a for a, c in cands.items() if (inst - c["scores"]["toy-math"]) * 100 <= 10]
    assert ok and sel["chosen_alpha"] == min(ok, key=lambda a: cands[a]["loss"])
    assert all(c["meets_retention"] == (a in ok) for a, c in cands.items())
    assert len({round(c["loss"], 6) for c in cands.values()}) == len(GRID)  # alpha changes the loss
    # the grafted model evaluated as shadow-ft is the chosen candidate, and its loss is reproducible
    shadow = Path(result["models"]["shadow-ft"])
    prov = json.loads((shadow / "shadowft_provenance.json").read_text())
    assert prov["alpha"] == sel["chosen_alpha"]
    manifest = json.loads((shadow.parent / "manifest.json").read_text())  # the graft's manifest
    assert manifest["chosen_alpha"] == sel["chosen_alpha"] and manifest["alpha_selection"] == sel
    data_dir = next((Path(prefect_env) / "store" / "artifacts" / "data").glob("*/data"))
    assert validation_loss(shadow, data_dir)["loss"] == pytest.approx(cands[sel["chosen_alpha"]]["loss"], rel=1e-5)
    assert (Path(result["report"]) / "alpha.png").stat().st_size > 1000
    assert "Alpha chosen from data" in (Path(result["report"]) / "report.md").read_text()
    assert all(states[f"graft-alpha-{a}"] == "Completed" for a in GRID), states
    assert all(states[f"validation-loss-alpha-{a}"] == "Completed" for a in GRID), states

    flow_state, states, _ = run_flow(cfg)
    assert flow_state == "Completed"
    cached = [
        "check_pair",
        "prepare_data",
        "train-base",
        "select_alpha",
        "graft-shadow-ft",
        "evaluate-shadow-ft",
        "evaluate-retention-instruct",
        *(f"{t}-alpha-{a}" for a in GRID for t in ("graft", "validation-loss", "evaluate-retention")),
    ]
    assert all(states[s] == "Cached" for s in cached), states


def test_new_instruct_release_reuses_data_and_training(prefect_env, zoo_family, second_instruct):
    assert similarity(zoo_family.instruct, second_instruct).mean < 0.02
    first = family_config(zoo_family, zoo_family.instruct, "graft.alpha=0.5")
    assert run_flow(first)[0] == "Completed"
    flow_state, states, result = run_flow(family_config(zoo_family, second_instruct, "graft.alpha=0.5"))
    assert flow_state == "Completed", states
    assert states["prepare_data"] == states["train-base"] == "Cached", states
    ran = ["check_pair", "graft-shadow-ft", "evaluate-instruct", "evaluate-shadow-ft", "report"]
    assert all(states[s] == "Completed" for s in ran), states
    assert set(states) == {"prepare_data", "train-base", "run-folder", *ran}, states
    prov = json.loads((Path(result["models"]["shadow-ft"]) / "shadowft_provenance.json").read_text())
    assert prov["inputs"]["instruct"]["path"] == str(second_instruct)
