"""Shadow-KTO (TRL's KTOTrainer as the `kto` objective): its data in TRL's and LLaMA-Factory's formats,
the refusals, its settings sub-section, and a few real KTO steps on the tiny trio."""

from __future__ import annotations

import json

import pytest

from shadowft.config import DataConfig, TrainConfig, load_config
from shadowft.errors import ShadowFTError
from shadowft.train.objectives import get_objective
from shadowft.train.objectives.kto import prepare_kto

FAST = {"objective": "kto", "max_steps": 4, "batch_size": 4, "grad_accum": 1, "save_steps": 100, "lr": 1e-3}


def _write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def trl_rows(n: int = 16) -> list[dict]:
    """TRL's unpaired format, strings and message lists mixed by file (here: message lists)."""
    return [
        {
            "prompt": [{"role": "user", "content": f"what is {a} + 1?"}],
            "completion": [{"role": "assistant", "content": f"[{a + 1}]" if a % 2 == 0 else str(a + 1)}],
            "label": a % 2 == 0,
        }
        for a in range(n)
    ]


@pytest.fixture(scope="module")
def kto_dir(llama_trio, tmp_path_factory):
    root = tmp_path_factory.mktemp("kto-data")
    src = _write(root / "k.jsonl", trl_rows(32))
    prepare_kto(DataConfig(sources=[src], max_length=64), llama_trio["instruct"], root / "prep")
    return root / "prep"


# -- data ------------------------------------------------------------------------------------------


def test_both_formats_render_the_same_rows_with_the_chat_template(llama_trio, tmp_path):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    trl_text = [
        {"prompt": "what is 1 + 1?", "completion": "[2]", "label": True},
        {"prompt": "what is 2 + 1?", "completion": "3", "label": False},
    ]
    llamafactory = [
        {
            "messages": [{"role": "user", "content": "what is 1 + 1?"}, {"role": "assistant", "content": "[2]"}],
            "kto_tag": True,
        },
        {
            "conversations": [{"from": "human", "value": "what is 2 + 1?"}, {"from": "gpt", "value": "3"}],
            "kto_tag": False,
        },
    ]
    out = {}
    for name, rows in (("trl", trl_text), ("lf", llamafactory)):
        stats = prepare_kto(
            DataConfig(sources=[_write(tmp_path / f"{name}.jsonl", rows)], max_length=64),
            llama_trio["instruct"],
            tmp_path / name,
        )
        assert (stats.rows, stats.desirable, stats.undesirable) == (2, 1, 1)
        assert json.loads((tmp_path / name / "stats.json").read_text())["kind"] == "kto"
        out[name] = load_from_disk(str(tmp_path / name / "dataset"))
    assert out["trl"].to_dict() == out["lf"].to_dict()
    tok = AutoTokenizer.from_pretrained(str(llama_trio["instruct"]))
    user = [{"role": "user", "content": "what is 1 + 1?"}]
    row = out["trl"][0]
    assert row["prompt"] == tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*user, {"role": "assistant", "content": "[2]"}], tokenize=False)
    assert full.startswith(row["prompt"] + row["completion"])  # the reply up to its end-of-turn token
    assert row["completion"].startswith("[2]") and row["label"] is True and out["trl"][1]["label"] is False


def test_llamafactory_last_assistant_turn_is_the_completion(llama_trio, tmp_path):
    from datasets import load_from_disk

    row = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "[4]"},
        ],
        "label": True,  # LLaMA-Factory's demo set names the column label (dataset_info maps it to kto_tag)
    }
    bad = {**row, "messages": row["messages"][:-1] + [{"role": "assistant", "content": "4"}], "label": False}
    prepare_kto(
        DataConfig(sources=[_write(tmp_path / "lf.jsonl", [row, bad])], max_length=128),
        llama_trio["instruct"],
        tmp_path / "p",
    )
    got = load_from_disk(str(tmp_path / "p" / "dataset"))
    assert "be brief" in got[0]["prompt"] and "hello" in got[0]["prompt"] and got[0]["prompt"].endswith("\n")
    assert got[0]["completion"].startswith("[4]") and got[1]["completion"].startswith("4")


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"prompt": "q", "completion": "a"}, r"line 2: missing field 'label' \(true for a desirable"),
        (
            {"prompt": "q", "completion": "a", "label": "true"},
            r"line 2: field 'label' must be true or false, got \"true\"",
        ),
        ({"prompt": "q", "completion": "a", "label": 1}, r"line 2: field 'label' must be true or false, got 1"),
        ({"prompt": "q", "completion": "a", "label": None}, r"line 2: field 'label' must be true or false, got null"),
    ],
)
def test_rows_without_a_boolean_label_are_refused_with_file_and_line(llama_trio, tmp_path, row, problem):
    good = {"prompt": "p", "completion": "c", "label": True}
    src = _write(tmp_path / "k.jsonl", [good, row, {**good, "label": False}])
    with pytest.raises(ShadowFTError, match=r"k\.jsonl " + problem) as err:
        prepare_kto(DataConfig(sources=[src]), llama_trio["instruct"], tmp_path / "out")
    assert "label each row true" in err.value.hint
    assert not (tmp_path / "out").exists()


def test_llamafactory_rows_need_a_boolean_kto_tag(llama_trio, tmp_path):
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    src = _write(tmp_path / "lf.jsonl", [{"messages": conv, "kto_tag": True}, {"messages": conv}])
    with pytest.raises(ShadowFTError, match=r"lf\.jsonl line 2: missing field 'kto_tag'"):
        prepare_kto(DataConfig(sources=[src]), llama_trio["instruct"], tmp_path / "out")


@pytest.mark.parametrize("label", [True, False])
def test_data_of_one_label_only_is_refused(llama_trio, tmp_path, label):
    src = _write(tmp_path / "k.jsonl", [{"prompt": f"q{i}", "completion": "a", "label": label} for i in range(3)])
    kind = "desirable" if label else "undesirable"
    with pytest.raises(ShadowFTError, match=f"only {kind} completions \\(3 rows\\)") as err:
        prepare_kto(DataConfig(sources=[src]), llama_trio["instruct"], tmp_path / "out")
    assert ("undesirable (label false)" if label else "desirable (label true)") in err.value.hint


def test_preference_pairs_and_packing_are_refused_with_what_to_do(llama_trio, tmp_path):
    src = _write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ShadowFTError, match="preference pair.*use train.objective dpo"):
        prepare_kto(DataConfig(sources=[src]), llama_trio["instruct"], tmp_path / "out")
    with pytest.raises(ShadowFTError, match="data.packing applies to SFT only"):
        prepare_kto(DataConfig(sources=[src], packing=True), llama_trio["instruct"], tmp_path / "out")


# -- settings --------------------------------------------------------------------------------------


def test_kto_settings_are_its_own_sub_section_in_its_key_only():
    kto = load_config(None, ["train.objective=kto", "train.kto.beta=0.3"])
    assert kto.train.objective_settings.beta == 0.3 and kto.train.effective_lr == 5e-6
    view = kto.train.cache_view()
    assert view["kto"]["beta"] == 0.3 and "dpo" not in view
    assert "kto" not in load_config(None, []).train.cache_view()
    schema = TrainConfig.model_json_schema()
    assert "kto" in schema["properties"]["objective"]["enum"]
    with pytest.raises(ShadowFTError, match="train.kto.loss"):
        load_config(None, ["train.objective=kto", "train.kto.loss=sigmoid"])
    with pytest.raises(ShadowFTError, match="batch_size of at least 2"):
        load_config(None, ["train.objective=kto", "train.batch_size=1"])
    load_config(None, ["train.objective=kto", "train.batch_size=1", "train.kto.loss=apo_zero_unpaired"])


# -- training --------------------------------------------------------------------------------------


def test_kto_lora_logs_rewards_and_kl_and_keeps_no_second_model(llama_trio, kto_dir, tmp_path):
    from shadowft.train import train_model

    res = train_model(llama_trio["base"], kto_dir, TrainConfig(**FAST), tmp_path / "out", tmp_path / "work")
    curve = json.loads((tmp_path / "out" / "loss_curve.json").read_text())
    assert [c["step"] for c in curve] == [1, 2, 3, 4]
    assert all({"kl", "rewards/chosen", "rewards/rejected"} <= c.keys() for c in curve) and curve[-1]["kl"] > 0
    assert curve[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # 1 - sigmoid(0): policy == reference at step 0
    assert curve[-1]["rewards/chosen"] > curve[-1]["rewards/rejected"]  # it learns the desirable completions
    assert res.objective == "kto" and res.reference_params == 0  # the adapter-disabled model is the reference
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_kto_data_check_refuses_one_label_before_the_model_loads(llama_trio, kto_dir, tmp_path):
    from datasets import load_from_disk

    ds = load_from_disk(str(kto_dir / "dataset")).filter(lambda r: r["label"])
    ds.save_to_disk(str(tmp_path / "one" / "dataset"))
    (tmp_path / "one" / "stats.json").write_text((kto_dir / "stats.json").read_text())
    with pytest.raises(ShadowFTError, match="only desirable"):
        get_objective("kto").check_dataset(ds, tmp_path / "one")


def test_image_rows_are_refused_kto_trains_text_only(llama_trio, gemma3_vlm_trio, tmp_path):
    """The media would be dropped and `<image>` trained as text: refused, for a text or a VLM pair."""
    good = {"prompt": "p", "completion": "c", "label": True}
    src = _write(tmp_path / "k.jsonl", [good, {**good, "prompt": "<image>what is it?", "images": ["x.png"]}])
    for pair in (llama_trio, gemma3_vlm_trio):
        with pytest.raises(ShadowFTError, match=r"k\.jsonl line 2: the row has images") as err:
            prepare_kto(DataConfig(sources=[src]), pair["instruct"], tmp_path / "out")
        assert "trains text only" in str(err.value) + str(err.value.hint)
