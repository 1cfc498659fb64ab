"""The shared helpers: registry lookups, atomic JSON, score formatting, the one config loader."""

from __future__ import annotations

import json

import pytest

from shadowft.compare import load_compare_config
from shadowft.config import load_config
from shadowft.errors import ShadowFTError
from shadowft.files import write_json_atomic
from shadowft.registry import lookup
from shadowft.tables import markdown_row, markdown_table, pct, with_change


def test_lookup_names_the_known_entries_and_a_close_one():
    assert lookup({"a": 1}, "a", "thing") == 1
    with pytest.raises(ShadowFTError, match="unknown thing 'sfx' \\(did you mean 'sft'\\?\\)") as err:
        lookup({"sft": 1, "dpo": 2}, "sfx", "thing")
    assert err.value.hint == "known things: dpo, sft"


def test_write_json_atomic_replaces_whole_files(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json_atomic(path, {"a": 1, "p": tmp_path})
    write_json_atomic(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2} and [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_score_formatting():
    assert pct(0.1234) == "12.3" and pct(None) == "-" and pct(float("nan")) == "-" and pct(0.05, signed=True) == "+5.0"
    assert with_change("12.3", -0.01) == "12.3 (-1.0)" and with_change("12.3", None) == "12.3"
    assert markdown_row(["*chance*", "0.0", ""]) == "| *chance* | 0.0 | |"
    assert markdown_table(["model", "vs", "a"], [["x", "y", "1.0"]], text_columns=2) == [
        "| model | vs | a |",
        "| --- | --- | ---: |",
        "| x | y | 1.0 |",
    ]


def test_one_loader_for_run_and_comparison_configs(tmp_path):
    with pytest.raises(ShadowFTError, match=r"seedz: unknown key \(did you mean 'seeds'\?\)") as err:
        load_compare_config(None, ["seedz=[1]"])
    assert "compare-toy.yaml" in err.value.hint
    with pytest.raises(
        ShadowFTError, match=r"run\.train\.lr: must be greater than 0.*\[from override 'run\.train\.lr=-1'\]"
    ):
        load_compare_config(None, ["run.train.lr=-1"])
    bad = tmp_path / "c.yaml"
    bad.write_text("seeds: [0\n")
    with pytest.raises(ShadowFTError, match=r"c\.yaml line \d+: invalid YAML"):
        load_compare_config(bad)
    with pytest.raises(ShadowFTError, match="comparison config file .* does not exist"):
        load_compare_config(tmp_path / "none.yaml")
    with pytest.raises(ShadowFTError, match="config file .* does not exist"):
        load_config(tmp_path / "none.yaml")
