"""Vision-language evaluation: lm-eval's `hf-multimodal` backend on a tiny real Gemma-3 VLM with the
offline image suite `toy-colour`, the request cache keyed by the images (a killed run resumes),
`vllm-vlm`'s refusal where vLLM cannot run, and the backends refusing the other modality."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shadowft.errors import EvalError, ShadowFTError
from shadowft.evaluate import evaluate_model, load_result, resolve_suites
from shadowft.evaluate.backends import get_backend
from shadowft.evaluate.results import EvalResult

REPO = Path(__file__).resolve().parents[2]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
MISSING_MODEL = Path("/nonexistent/model")  # a model that cannot load proves the check came first
N_COLOUR = 48  # rows of shadowft/suites/toy_colour/data/toy_colour.jsonl


class _Counter:
    """Counts the requests that reach the real model (wraps HFMultimodalLM's entry point, calls it)."""

    def __init__(self, monkeypatch):
        from lm_eval.models.hf_vlms import HFMultimodalLM

        self.calls: dict[str, int] = {}
        real = HFMultimodalLM.generate_until

        def wrapped(lm, requests, *a, **kw):
            self.calls["generate_until"] = self.calls.get("generate_until", 0) + len(requests)
            return real(lm, requests, *a, **kw)

        monkeypatch.setattr(HFMultimodalLM, "generate_until", wrapped)


def _rows(cache_dir: Path) -> int:
    dbs = list(cache_dir.glob("*.db"))
    if not dbs:
        return 0
    try:
        with sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
    except sqlite3.Error:
        return 0


def _replies(out: Path) -> dict[int, list]:
    rows = [json.loads(x) for x in (out / "samples_toy_colour.jsonl").read_text().splitlines()]
    return {r["doc_id"]: r["resps"] for r in rows}


def test_image_suites_resolve_by_name():
    colour, chartqa, mmmu = resolve_suites("toy-colour, chartqa, mmmu_val")
    assert colour.offline and colour.tasks[0].yaml_path.is_file() and colour.chance == pytest.approx(1 / 6)
    assert (chartqa.tasks[0].name, chartqa.tasks[0].metric, chartqa.offline) == ("chartqa", "relaxed_accuracy", False)
    assert (mmmu.tasks[0].name, mmmu.tasks[0].metric, mmmu.offline) == ("mmmu_val", "acc", False)
    assert all("hf-multimodal" in s.description for s in (colour, chartqa, mmmu))


def test_toy_colour_on_a_tiny_vlm_then_a_rerun_answers_from_the_cache(gemma3_vlm_trio, tmp_path, monkeypatch):
    model, cache = gemma3_vlm_trio["instruct"], tmp_path / "cache"
    first = evaluate_model(
        model, ["toy-colour"], tmp_path / "a", limit=3, batch_size=3, backend="hf-multimodal", cache_dir=cache
    )
    # the text backends' schema: scores, both filters, the chat template, generation settings, samples
    assert isinstance(load_result(tmp_path / "a" / "results.json"), EvalResult)
    suite = first.suites["toy-colour"]
    assert suite.n == 3 and suite.chat_template and first.chat_template and first.request_cache
    assert {"exact_match,flexible", "exact_match,strict"} <= set(suite.tasks["toy_colour"].metrics)
    assert first.backend == "hf-multimodal" and first.backend_settings["max_images"] == 999
    assert first.generation["toy_colour"]["max_gen_toks"] == 16 and first.samples == {
        "toy_colour": "samples_toy_colour.jsonl"
    }
    prompt = json.loads((tmp_path / "a" / "samples_toy_colour.jsonl").read_text().splitlines()[0])["arguments"][0][0]
    assert "<start_of_image>What colour is the square?" in prompt and "<|im_start|>assistant" in prompt
    # one row per picture: the three share their question, so a key without the image would be one row
    assert _rows(cache) == 3

    counter = _Counter(monkeypatch)
    again = evaluate_model(
        model, ["toy-colour"], tmp_path / "b", limit=3, batch_size=3, backend="hf-multimodal", cache_dir=cache
    )
    assert counter.calls == {}  # every request answered from the cache
    assert again.suites == first.suites and _replies(tmp_path / "b") == _replies(tmp_path / "a")


def test_without_the_chat_template_the_image_marker_is_the_processors(gemma3_vlm_trio, tmp_path):
    """lm-eval writes the config's image token (Gemma-3: <image_soft_token>) for `<image>`; Gemma-3's
    processor expands <start_of_image>, and refuses a prompt without it."""
    res = evaluate_model(
        gemma3_vlm_trio["base"], ["toy-colour"], tmp_path, limit=2, batch_size=2, backend="hf-multimodal",
        apply_chat_template=False,
    )  # fmt: skip
    assert res.suites["toy-colour"].n == 2 and not res.chat_template
    prompt = json.loads((tmp_path / "samples_toy_colour.jsonl").read_text().splitlines()[0])["arguments"][0][0]
    assert prompt == "<image>What colour is the square?"  # lm-eval's placeholder, replaced when encoded


def test_each_backend_refuses_the_other_modality(gemma3_vlm_trio, llama_trio, tmp_path):
    with pytest.raises(EvalError, match="is a vision-language model") as err:  # before any task or model loads
        evaluate_model(gemma3_vlm_trio["instruct"], ["toy-math"], tmp_path / "a")
    assert "set eval.backend: hf-multimodal" in err.value.hint
    with pytest.raises(EvalError, match="is a text-only model") as err:
        evaluate_model(llama_trio["instruct"], ["toy-math"], tmp_path / "b", backend="hf-multimodal")
    assert "eval.backend: hf" in err.value.hint
    with pytest.raises(EvalError, match="toy-colour ask about images") as err:  # tasks are built; no model loads
        evaluate_model(llama_trio["instruct"], ["toy-colour"], tmp_path / "c")
    assert "hf-multimodal" in err.value.hint


def test_a_text_backend_on_a_vlm_pair_is_refused_before_any_stage(gemma3_vlm_trio):
    from shadowft.config import load_config
    from shadowft.stages import preflight

    pair = [f"pair.base={gemma3_vlm_trio['base']}", f"pair.instruct={gemma3_vlm_trio['instruct']}"]
    with pytest.raises(EvalError, match="is a vision-language model") as err:
        preflight(load_config(None, [*pair, "eval.suites=[toy-colour]"]))
    assert "set eval.backend: hf-multimodal" in err.value.hint
    preflight(load_config(None, [*pair, "eval.suites=[toy-colour]", "eval.backend=hf-multimodal"]))


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_vlm_is_refused_without_vllm(tmp_path):
    with pytest.raises(EvalError, match="eval.backend is vllm-vlm but vLLM is not installed") as err:
        evaluate_model(MISSING_MODEL, ["toy-colour"], tmp_path, backend="vllm-vlm")
    assert "eval.backend=hf-multimodal" in err.value.hint
    from shadowft.config import load_config
    from shadowft.stages import preflight

    with pytest.raises(EvalError, match="vllm-vlm but vLLM is not installed"):  # and before any stage
        preflight(load_config(None, ["eval.backend=vllm-vlm", "eval.vllm_vlm.max_images=2"]))
    with pytest.raises(ShadowFTError, match="needs 2 GPUs per evaluation"):  # its engine settings are its own
        load_config(None, ["eval.backend=vllm-vlm", "eval.vllm_vlm.tensor_parallel_size=2"])


def test_unknown_backend_lists_the_multimodal_ones():
    with pytest.raises(ShadowFTError, match="unknown evaluation backend 'hf-multimodel'") as err:
        get_backend("hf-multimodel")
    assert "did you mean 'hf-multimodal'" in str(err.value) and "vllm-vlm" in err.value.hint
    with pytest.raises(EvalError, match="max_images"):
        get_backend("hf-multimodal", max_images=0)


_CHILD = """
import sys
from pathlib import Path
from shadowft.evaluate import evaluate_model
evaluate_model(Path(sys.argv[1]), ["toy-colour"], Path(sys.argv[2]), backend="hf-multimodal", batch_size=4,
               cache_dir=Path(sys.argv[3]))
"""


@pytest.mark.slow
def test_killed_image_evaluation_resumes_from_the_request_cache(gemma3_vlm_trio, tmp_path, monkeypatch):
    """As tests/evaluate/test_scale.py does for text: SIGKILL mid-run, re-run, only the rest reaches the model."""
    model, cache = gemma3_vlm_trio["instruct"], tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(model), str(tmp_path / "killed"), str(cache)], env=env)
    try:
        deadline = time.monotonic() + 120
        while _rows(cache) < 8:  # two batches of 4 answered and kept
            assert proc.poll() is None, "the evaluation ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    done = _rows(cache)
    assert 8 <= done < N_COLOUR and done % 4 == 0  # whole batches: each is stored when it returns

    counter = _Counter(monkeypatch)
    resumed = evaluate_model(
        model, ["toy-colour"], tmp_path / "resumed", backend="hf-multimodal", batch_size=4, cache_dir=cache
    )
    assert counter.calls == {"generate_until": N_COLOUR - done}  # only what was left reached the model
    assert resumed.request_cache and resumed.suites["toy-colour"].n == N_COLOUR

    # the answers kept by the killed run are the model's own: a fresh run of those pictures agrees
    fresh = evaluate_model(model, ["toy-colour"], tmp_path / "fresh", limit=done, batch_size=4, backend="hf-multimodal")
    replies = _replies(tmp_path / "resumed")
    assert _replies(tmp_path / "fresh") == {i: replies[i] for i in range(done)}
    assert fresh.suites["toy-colour"].n == done


def test_own_data_with_images_keeps_them_and_runs_after_a_templated_suite(gemma3_vlm_trio, tmp_path):
    """The held-out split of a VLM pair's data: each image's expansion in the rendered prompt becomes
    `<image>` again (re-encoded with the picture, it is the prompt training saw, token for token), the
    pictures are written beside the rows, and the rendered suite runs after toy-colour's templated one."""
    from PIL import Image

    from shadowft.config import DataConfig
    from shadowft.data import load_validation, prepare_dataset
    from shadowft.evaluate.own_data import own_data_rows, write_own_data_task
    from shadowft.vlm_data import load_processor

    (tmp_path / "img").mkdir()
    rows = []
    for i, colour in enumerate(["red", "green", "blue", "red", "green", "blue"]):
        Image.new("RGB", (20, 12), {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 220)}[colour]).save(
            tmp_path / "img" / f"{i}.png"
        )
        question = "<image>What colour is the square?" if i % 3 else "Say the colour of <image>, please."
        msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": colour}]
        rows.append({"messages": msgs, "images": [f"img/{i}.png"]})
    rows.append({"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]})
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = tmp_path / "prepared"
    spec = DataConfig(sources=[str(tmp_path / "d.jsonl")], validation_ratio=0.5)
    prepare_dataset(spec, gemma3_vlm_trio["instruct"], data)

    held, _, _ = own_data_rows(data)
    val, processor = load_validation(data), load_processor(data / "tokenizer")
    assert sum(bool(r.get("images")) for r in held) == sum(bool(x) for x in val["images"]) > 0
    for row, ids, labels, images in zip(held, val["input_ids"], val["labels"], val["images"], strict=True):
        assert row["prompt"].count("<image>") == len(images) and "<image_soft_token>" not in row["prompt"]
        text = row["prompt"].replace("<image>", "<start_of_image>")
        enc = processor(text=[text], images=[images] if images else None, add_special_tokens=False)["input_ids"][0]
        prompt_len = labels.index(next(y for y in labels if y != -100))  # one turn: the reply's start
        assert list(enc) == list(ids[:prompt_len])

    folder = write_own_data_task(data, tmp_path / "own")
    assert folder is not None and (folder / "images").is_dir()
    res = evaluate_model(
        gemma3_vlm_trio["instruct"], ["toy-colour", str(folder)], tmp_path / "out", limit=2, batch_size=2,
        backend="hf-multimodal",
    )  # fmt: skip
    assert res.suites["toy-colour"].chat_template and not res.suites["own-data"].chat_template
    assert res.suites["own-data"].n == 2


def _init_params(module: str, cls_name: str) -> set[str]:
    """Parameter names of an lm-eval model's __init__, read from the installed source (importing the
    vLLM modules needs vLLM)."""
    import ast

    import lm_eval

    tree = ast.parse((Path(lm_eval.__file__).parent / "models" / f"{module}.py").read_text())
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls_name)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}


def test_vllm_vlm_model_args_are_what_lm_evals_vllm_vlm_model_takes(tmp_path):
    backend = get_backend("vllm-vlm", tensor_parallel_size=2, max_images=3, image_max_side=448)
    args = backend.model_args(tmp_path, batch_size="auto", dtype="bf16", trust_remote_code=False)
    assert (args["max_images"], args["image_max_side"], args["tensor_parallel_size"]) == (3, 448, 2)
    takes = _init_params("vllm_vlms", "VLLM_VLM") | _init_params("vllm_causallms", "VLLM")  # VLLM_VLM(VLLM)
    assert set(args) - takes == {"gpu_memory_utilization"}  # a vLLM engine argument, passed on to vllm.LLM
    assert backend.devices(backend.config) == 2 and backend.settings()["max_images"] == 3


def test_cli_eval_takes_the_backend(gemma3_vlm_trio, tmp_path):
    from typer.testing import CliRunner

    from shadowft.cli import app

    runner, model, out = CliRunner(), str(gemma3_vlm_trio["instruct"]), tmp_path / "res.json"
    refused = runner.invoke(app, ["eval", model, "--suite", "toy-colour", "--output", str(out)])
    assert isinstance(refused.exception, EvalError) and "--backend hf-multimodal" in refused.exception.hint
    assert not out.exists()
    listing = runner.invoke(app, ["suites"])
    assert listing.exit_code == 0 and all(name in listing.output for name in ("toy-colour", "chartqa", "mmmu_val"))
    ran = runner.invoke(
        app,
        ["eval", model, "--suite", "toy-colour", "--limit", "1", "--output", str(out), "--backend", "hf-multimodal"],
    )
    assert ran.exit_code == 0, ran.output
    assert "toy-colour" in ran.output and json.loads(out.read_text())["backend"] == "hf-multimodal"


@pytest.mark.parametrize(
    ("suite", "task", "metric", "chance", "n"),
    [("toy-chart", "toy_chart", "relaxed_accuracy", 1 / 9, 60), ("toy-count", "toy_count", "exact_match", 1 / 5, 50)],
)
def test_chart_and_count_suites_are_deterministic_and_run_on_a_tiny_vlm(
    suite, task, metric, chance, n, llava_vlm_trio, tmp_path
):
    """The shipped rows are what the generator writes (the same pictures on every machine), and a real
    lm-eval run scores both filters."""
    import importlib.util as iu

    from shadowft.zoo.pictures import draw

    (found,) = resolve_suites(suite)
    assert found.offline and found.chance == pytest.approx(chance) and "hf-multimodal" in found.description
    folder = found.tasks[0].yaml_path.parent
    spec = iu.spec_from_file_location(f"{task}_utils", folder / "utils.py")
    utils = iu.module_from_spec(spec)
    spec.loader.exec_module(utils)
    shipped = [json.loads(x) for x in (folder / "data" / f"{task}.jsonl").read_text().splitlines()]
    assert shipped == utils.rows() and len(shipped) == n
    assert draw(shipped[0]).tobytes() == draw(json.loads(json.dumps(shipped[0]))).tobytes()
    result = evaluate_model(llava_vlm_trio["instruct"], [suite], tmp_path / "o", limit=3, backend="hf-multimodal")
    got = result.suites[suite]
    assert got.n == 3 and {f"{metric},flexible", f"{metric},strict"} <= set(got.tasks[task].metrics)


def test_toy_colour_rows_are_shades_each_nearest_its_own_name():
    """The shipped rows are what the generator writes; each square is a shade (not the exact colour a
    model may be post-trained on) that is still nearer its answer than any other colour: one right answer."""
    import importlib.util as iu

    (found,) = resolve_suites("toy-colour")
    folder = found.tasks[0].yaml_path.parent
    spec = iu.spec_from_file_location("toy_colour_utils", folder / "utils.py")
    utils = iu.module_from_spec(spec)
    spec.loader.exec_module(utils)
    shipped = [json.loads(x) for x in (folder / "data" / "toy_colour.jsonl").read_text().splitlines()]
    assert shipped == utils.rows() and len(shipped) == N_COLOUR
    assert all(utils.nearest_colour(r["rgb"]) == r["answer"] for r in shipped)
    offsets = [abs(a - b) for r in shipped for a, b in zip(r["rgb"], utils.COLOURS[r["answer"]], strict=True)]
    assert max(offsets) <= utils.SHADE
    assert all(r["rgb"] != list(utils.COLOURS[r["answer"]]) for r in shipped)


def test_image_and_text_suites_in_one_evaluation(llava_vlm_trio, tmp_path):
    """A VLM's image and text skills in one call: lm-eval hands a run's requests to hf-multimodal at once,
    which takes its image or text path by the first request alone (a mixed run failed with `too many
    values to unpack`), so they run apart, and both are scored."""
    result = evaluate_model(
        llava_vlm_trio["instruct"],
        ["toy-colour", "toy-math"],
        tmp_path / "o",
        limit=2,
        batch_size=4,  # one batch would hold both kinds
        backend="hf-multimodal",
        cache_dir=tmp_path / "cache",
    )
    assert {name: got.n for name, got in result.suites.items()} == {"toy-colour": 2, "toy-math": 2}
    assert {"samples_toy_colour.jsonl", "samples_toy_math.jsonl"} <= {p.name for p in (tmp_path / "o").iterdir()}
