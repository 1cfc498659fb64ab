"""The embedded vision-language family's builder (issue 30), at its `ci` preset (seconds; mechanics only:
the default preset's skills are checked where it is built, not here)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from shadowft.config import DataConfig
from shadowft.data import prepare_dataset
from shadowft.pair import check_pair
from shadowft.zoo.vlm import IMAGE_MARKER, build_vlm_family, caption


@pytest.fixture(scope="module")
def vlm_family(zoo_family, tmp_path_factory):
    return build_vlm_family(tmp_path_factory.mktemp("vlm") / "family", preset="ci", text_family=zoo_family.root)


def test_the_family_loads_as_llava_over_the_text_familys_language_models(vlm_family, zoo_family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    manifest = vlm_family.read_manifest()
    assert (manifest["version"], manifest["seed"], manifest["config"]["preset"]) == ("toy-vlm-v2", 0, "ci")
    for part in (vlm_family.base, vlm_family.instruct):
        model = AutoModelForImageTextToText.from_pretrained(part)
        processor = AutoProcessor.from_pretrained(part)
        assert type(model).__name__ == "LlavaForConditionalGeneration"
        assert model.config.text_config.model_type == "qwen3"  # the text family's architecture
        assert processor.tokenizer.image_token == IMAGE_MARKER and len(processor.tokenizer) == 513
    # the tower was frozen in Instruct's post-training: both hold the same one, bit for bit
    base, instruct = (load_file(str(p / "model.safetensors")) for p in (vlm_family.base, vlm_family.instruct))
    tower = [k for k in base if "vision_tower" in k]
    assert tower and all(base[k].equal(instruct[k]) for k in tower)
    assert any(not base[k].equal(instruct[k]) for k in base if "language_model" in k)


def test_the_pair_check_accepts_it_with_sigma_by_part(vlm_family):
    report = check_pair(vlm_family.base, vlm_family.instruct)
    assert report.ok and report.sigma is not None
    assert report.sigma.by_role["vision_tower"] == 0.0 and report.sigma.by_role["language_model"] > 0


def test_the_users_chart_data_prepares_with_instructs_processor(vlm_family, tmp_path):
    rows = [json.loads(line) for line in (vlm_family.data / "chart.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all((vlm_family.data / r["images"][0]).is_file() for r in rows)
    assert rows[0]["messages"][1]["content"].isdigit()  # the user's style: the number alone
    stats = prepare_dataset(
        DataConfig(sources=[str(vlm_family.data / "chart.jsonl")]), vlm_family.instruct, tmp_path / "p"
    )
    assert stats.samples == 16


def test_captions_name_colours_and_counts_never_a_bars_value():
    bars = {"kind": "bars", "values": [3, 7, 5], "colours": [[220, 30, 30], [30, 160, 50], [30, 60, 220]]}
    assert caption(bars) == "a bar chart: a short red bar, a tall green bar and a medium blue bar."
    assert caption({"kind": "dots", "count": 3, "rgb": [30, 60, 220]}) == "3 blue dots."


def test_zoo_vlm_placeholders_resolve_the_example_to_the_familys_members(vlm_family, zoo_family):
    from pathlib import Path

    from shadowft.config import load_config
    from shadowft.stages import uses_vlm_family, zoo_placeholders

    names = zoo_placeholders(zoo_family.root, vlm_family.root)
    assert names["base"] == zoo_family.base  # the text family's names stay
    assert (names["vlm-base"], names["vlm-chart"]) == (vlm_family.base, vlm_family.data / "chart.jsonl")
    assert "vlm-base" not in zoo_placeholders(zoo_family.root)  # installed only when a config names it
    assert uses_vlm_family(["zoo:vlm-base"]) and not uses_vlm_family(["zoo:base", "zoo:general"])
    example = Path(__file__).resolve().parents[1] / "examples" / "toy-vlm.yaml"
    cfg = load_config(example).resolve(names)
    assert (cfg.pair.base, cfg.data.sources) == (str(vlm_family.base), [str(vlm_family.data / "chart.jsonl")])


def test_an_installed_family_is_reused_and_another_seed_there_is_refused(vlm_family):
    from shadowft.errors import ShadowFTError

    stamp = vlm_family.manifest.stat().st_mtime_ns
    again = build_vlm_family(vlm_family.root, preset="ci")
    assert again.root == vlm_family.root and vlm_family.manifest.stat().st_mtime_ns == stamp  # not rebuilt
    with pytest.raises(ShadowFTError, match="holds a different VLM family"):
        build_vlm_family(vlm_family.root, seed=1, preset="ci")
