"""A vision-language pair through the real Prefect flow: data with images -> LoRA on Base -> graft onto
Instruct -> lm-eval's hf-multimodal on an image suite -> report, run folder and promotion gate; the rerun
comes from the cache, as for text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shadowft.config import load_config
from shadowft.modality import checkpoint_parts
from tests.test_pipeline import EVALS, STAGES_BEFORE_EVAL, run_flow

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}


def write_image_dataset(folder: Path, n: int = 12) -> Path:
    """LLaMA-Factory multimodal rows: `<image>` in the user's text, image paths relative to the file."""
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        name, rgb = list(COLOURS.items())[i % len(COLOURS)]
        Image.new("RGB", (32, 32), rgb).save(folder / "img" / f"{i}.png")
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "<image>What colour is the square?"},
                    {"role": "assistant", "content": f"The answer is {name}."},
                ],
                "images": [f"img/{i}.png"],
            }
        )
    data = folder / "colours.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@pytest.mark.slow
def test_a_vlm_pair_runs_the_whole_flow_and_reruns_from_cache(prefect_env, gemma3_vlm_trio, tmp_path):
    data = write_image_dataset(tmp_path / "data")
    cfg = load_config(
        None,
        [
            f"pair.base={gemma3_vlm_trio['base']}",
            f"pair.instruct={gemma3_vlm_trio['instruct']}",
            f"data.sources=[{data}]",
            "data.max_length=64",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.save_steps=2",
            "eval.suites=[toy-colour]",
            "eval.backend=hf-multimodal",
            "eval.limit=4",
            "output.promote=true",
            f"output.root={tmp_path / 'runs'}",
        ],
    )
    flow_state, states, result = run_flow(cfg)
    assert flow_state == "Completed", states
    assert all(states[s] == "Completed" for s in STAGES_BEFORE_EVAL + EVALS), states
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    assert list(summary["scores"]) == ["instruct", "direct", "shadow-ft"]
    assert all("toy-colour" in s for s in summary["scores"].values())
    # the graft changed the language model only: the tower and projector are Instruct's
    shadow = Path(result["models"]["shadow-ft"])
    got, instruct = (
        load_file(str(shadow / "model.safetensors")),
        load_file(str(gemma3_vlm_trio["instruct"] / "model.safetensors")),
    )
    parts = checkpoint_parts(shadow)
    changed = {parts.role(n) for n in got if not torch.equal(got[n], instruct[n])}
    assert changed == {"language_model"}
    assert Path(result["folder"]).is_dir()
    assert (tmp_path / "runs" / "shadow-ft" / "promoted").exists()  # the first run is promoted

    flow_state, states, _ = run_flow(cfg)
    assert flow_state == "Completed"
    assert all(states[s] == "Cached" for s in STAGES_BEFORE_EVAL + EVALS), states


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "method"), [("llava", "full"), ("gemma3", "full"), ("llava", "lora")])
def test_each_architecture_and_method_grafts_onto_the_language_model_only(prefect_env, arch, method, request, tmp_path):
    """The other (architecture, method) pairs: full FT of Base (tower and projector frozen) has its delta
    extracted and grafted, LoRA its adapter; each evaluated with images."""
    trio = request.getfixturevalue(f"{arch}_vlm_trio")
    data = write_image_dataset(tmp_path / "data")
    cfg = load_config(
        None,
        [
            f"pair.base={trio['base']}",
            f"pair.instruct={trio['instruct']}",
            f"data.sources=[{data}]",
            "data.max_length=64",
            f"train.method={method}",
            "train.max_steps=2",
            "train.batch_size=4",
            "eval.suites=[toy-colour]",
            "eval.backend=hf-multimodal",
            "eval.limit=4",
            "baselines=[instruct]",
            f"output.root={tmp_path / 'runs'}",
        ],
    )
    flow_state, states, result = run_flow(cfg)
    assert flow_state == "Completed", states
    assert (states.get("extract_delta") == "Completed") == (method == "full"), states
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    assert list(summary["scores"]) == ["instruct", "shadow-ft"]
    shadow = Path(result["models"]["shadow-ft"])
    got = load_file(str(shadow / "model.safetensors"))
    instruct = load_file(str(trio["instruct"] / "model.safetensors"))
    parts = checkpoint_parts(shadow)
    assert {parts.role(n) for n in got if not torch.equal(got[n], instruct[n])} == {"language_model"}


@pytest.mark.slow
def test_the_toy_vlm_example_runs_on_the_embedded_vlm_family(prefect_env):
    """`shadowft run examples/toy-vlm.yaml` as a user runs it (CI-sized: a few steps and items): the
    `zoo:vlm-*` placeholders install the shipped VLM family into the store, and the report scores
    Instruct, direct tuning and Shadow-FT on the new image skill and the two old ones."""
    from shadowft.zoo.vlm import default_vlm_family_dir

    example = Path(__file__).resolve().parents[1] / "examples" / "toy-vlm.yaml"
    cfg = load_config(
        example,
        ["data.max_samples=64", "train.max_steps=4", "eval.limit=4", f"output.root={prefect_env / 'runs'}"],
    )
    flow_state, states, result = run_flow(cfg)
    assert flow_state == "Completed", states
    assert default_vlm_family_dir().joinpath("family.json").is_file()
    assert json.loads(default_vlm_family_dir().joinpath("family.json").read_text())["source"] == "shipped"
    summary = json.loads((Path(result["report"]) / "summary.json").read_text())
    assert list(summary["scores"]) == ["instruct", "direct", "shadow-ft"]
    assert summary["suites"] == ["toy-chart", "toy-colour", "toy-count"]
    assert summary["n"] == {s: 4 for s in summary["suites"]}
    provenance = json.loads((Path(result["models"]["shadow-ft"]) / "shadowft_provenance.json").read_text())
    assert provenance["inputs"]["instruct"]["path"] == str(default_vlm_family_dir() / "instruct"), provenance
