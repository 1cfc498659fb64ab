"""The alpha choice rule, the validation split and the config of graft.alpha auto (fast)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from shadowft.config import DataConfig, GraftConfig, RunConfig
from shadowft.errors import ShadowFTError
from shadowft.graft.select import Candidate, choose_alpha


def test_choice_is_the_lowest_loss_among_candidates_that_keep_retention():
    cands = [
        Candidate(0.5, loss=1.20, scores={"toy-math": 0.60}),
        Candidate(1.0, loss=1.00, scores={"toy-math": 0.50}),  # lowest loss, but 12 points below Instruct
        Candidate(1.5, loss=1.10, scores={"toy-math": 0.58}),  # 4 points below: allowed
    ]
    sel = choose_alpha(cands, {"toy-math": 0.62}, {"toy-math": 5})
    assert sel.chosen_alpha == 1.5
    assert [c.meets_retention for c in sel.candidates] == [True, False, True]
    assert sel.candidates[1].drops["toy-math"] == pytest.approx(12.0)
    # without a retention rule: the plain argmin
    assert choose_alpha(cands, {}, {}).chosen_alpha == 1.0


def test_no_candidate_keeps_retention_is_refused_with_a_hint():
    cands = [Candidate(1.0, loss=1.0, scores={"toy-math": 0.1})]
    with pytest.raises(ShadowFTError, match="no alpha of the grid") as err:
        choose_alpha(cands, {"toy-math": 0.5}, {"toy-math": 1})
    assert "graft.alpha_grid" in (err.value.hint or "")


def test_auto_alpha_needs_a_validation_split_and_sft():
    with pytest.raises(ValidationError, match="validation_ratio"):
        RunConfig(graft=GraftConfig(alpha="auto"))
    RunConfig(graft=GraftConfig(alpha="auto"), data=DataConfig(validation_ratio=0.1))
    with pytest.raises(ValidationError, match="alpha"):
        GraftConfig(alpha=0)
    with pytest.raises(ValidationError, match="alpha"):
        GraftConfig(alpha="best")


def test_keys_of_existing_configs_do_not_change():
    g = GraftConfig()
    assert set(g.cache_view()) == {"alpha", "scope"}
    assert g.candidate(0.5).cache_view() == GraftConfig(alpha=0.5).cache_view()
    assert set(DataConfig().cache_view()) == set(DataConfig().model_dump()) - {
        "sources",
        "validation_ratio",
        "validation_sources",
        "max_record_mb",  # only refuses input, never changes what is prepared
    }


def test_validation_split_is_held_out_from_training(llama_trio, tmp_path):
    from shadowft.data import load_prepared, load_validation, prepare_dataset

    rows = [
        {"messages": [{"role": "user", "content": f"{i} + {i}"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(20)
    ]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare_dataset(DataConfig(sources=[str(src)], validation_ratio=0.25), llama_trio["instruct"], tmp_path / "p")
    train, val = load_prepared(tmp_path / "p"), load_validation(tmp_path / "p")
    assert len(train) == 15 and len(val) == 5
    assert not {tuple(x) for x in train["input_ids"]} & {tuple(x) for x in val["input_ids"]}
    assert all(any(y != -100 for y in lab) for lab in val["labels"])  # assistant tokens are labelled
    prepare_dataset(DataConfig(sources=[str(src)]), llama_trio["instruct"], tmp_path / "q")
    assert len(load_prepared(tmp_path / "q")) == 20 and load_validation(tmp_path / "q") is None
    prepare_dataset(
        DataConfig(sources=[str(src)], validation_sources=[str(src)]), llama_trio["instruct"], tmp_path / "v"
    )
    assert len(load_prepared(tmp_path / "v")) == 20 and len(load_validation(tmp_path / "v")) == 20
