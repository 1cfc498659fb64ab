"""The embedded toy family: data generators, build mechanics, determinism, and (slow) its skills."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from shadowft.zoo import corpus
from shadowft.zoo.build import FamilyPaths, build_family

SUITE_DATA = Path(__file__).resolve().parents[1] / "shadowft" / "suites" / "toy" / "data"


def _sigma_mean(a_dir: Path, b_dir: Path) -> float:
    """sigma per tensor = sum|A-B| / (sum|A|+sum|B|) in float32, mean over model.layers.* tensors (independent of shadowft.pair)."""
    from safetensors.torch import load_file

    a, b = (
        load_file(a_dir / "model.safetensors"),
        load_file(b_dir / "model.safetensors"),
    )
    vals = []
    for k in a:
        if k.startswith("model.layers."):
            x, y = a[k].float(), b[k].float()
            vals.append(float((x - y).abs().sum() / (x.abs().sum() + y.abs().sum())))
    return sum(vals) / len(vals)


# ----------------------------------------------------------------------------------- generators


def test_committed_suite_data_is_what_the_generators_write(tmp_path):
    written = corpus.write_suite_data(tmp_path)
    for suite, path in written.items():
        assert (SUITE_DATA / f"{suite}.jsonl").read_bytes() == path.read_bytes(), suite
    assert (SUITE_DATA / "README.md").exists()


def test_suites_have_distinct_questions_and_balanced_true_false():
    for suite in corpus.SUITES:
        recs = corpus.read_jsonl(SUITE_DATA / f"{suite}.jsonl")
        assert len(recs) == corpus.EVAL_SIZE
        assert len({r["question"] for r in recs}) == len(recs)
    golds = [r["answer"] for r in corpus.read_jsonl(SUITE_DATA / "toy_reasoning.jsonl")]
    assert golds.count("true") == golds.count("false") == corpus.EVAL_SIZE // 2
    for r in corpus.read_jsonl(SUITE_DATA / "toy_math.jsonl"):
        assert r["answer"] == r["answer"].strip() and "\n" not in r["answer"]


def test_training_generators_never_produce_eval_questions():
    exclude = corpus.eval_questions()
    rng = random.Random(1)
    docs = corpus.pretrain_docs(rng, 2000, exclude)
    text = "\n\n".join(docs)
    assert "<|im_start|>" in text  # some chat documents, as real bases see
    samples = corpus.sft_samples(rng, 3000, exclude) + corpus.sft_samples(rng, 500, exclude, {"domain": 1.0})
    assert not {m[1]["content"] for m in samples} & exclude
    assert not any("Reverse the digits" in d for d in docs)  # the domain skill is new to both models


def test_user_data_has_another_style_than_instructs_post_training_and_the_suites_extract_both():
    """Instruct is tuned on bare answers; the user's sets give the same kind of correct answers in their
    own style, which the suites' flexible filter extracts (and their strict filter does not)."""
    import re

    from shadowft.zoo.score import extract_answer

    exclude = corpus.eval_questions()
    instruct_mix = corpus.sft_samples(random.Random(1), 300, exclude)
    user = corpus.sft_samples(random.Random(2), 300, exclude, {"math": 0.5, "reasoning": 0.5}, user_style=True)
    assert all(m[0]["content"] == corpus.SYSTEM_PROMPT for m in instruct_mix + user)
    styles = {re.sub(r"(?<=is |r: )\S+?(?=\.?$)", "X", m[2]["content"]) for m in user}
    assert styles == {"The answer is X.", "Answer: X"}
    for m in user:
        answer = (
            m[2]["content"].split(" ", 3)[-1].rstrip(".") if m[2]["content"].startswith("The") else m[2]["content"][8:]
        )
        assert extract_answer(m[2]["content"]) == answer != m[2]["content"]
    assert all(extract_answer(m[2]["content"]) == m[2]["content"] for m in instruct_mix)
    # the suites' YAML holds the same pattern (single-quoted: backslashes are literal)
    yaml_text = (SUITE_DATA.parent / "_toy_generative.yaml").read_text()
    assert f"regex_pattern: '{corpus.ANSWER_PATTERN}'" in yaml_text


def test_chatml_rendering_matches_the_tokenizer_template():
    from shadowft.tiny import build_tokenizer

    tok = build_tokenizer()
    msgs = corpus.chat_messages(corpus.QA("What is 2 + 3?", "5", "math_add"))
    assert tok.apply_chat_template(msgs, tokenize=False) == corpus.render_chatml(msgs)


# ------------------------------------------------------------------------------------ mechanics


@pytest.fixture(scope="module")
def ci_family(tmp_path_factory) -> FamilyPaths:
    return build_family(tmp_path_factory.mktemp("zoo_ci") / "fam", seed=3, preset="ci", progress=False)


def test_ci_family_layout_and_eos_agree_everywhere(ci_family):
    from transformers import AutoTokenizer

    m = ci_family.read_manifest()
    assert m["seed"] == 3 and m["config"]["preset"] == "ci"
    for model_dir in (ci_family.base, ci_family.instruct):
        tok = AutoTokenizer.from_pretrained(model_dir)
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        assert tok.eos_token == "<|im_end|>"
        assert json.loads((model_dir / "config.json").read_text())["eos_token_id"] == eos
        assert json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"] == eos
        assert tok.chat_template and "<|im_end|>" in tok.chat_template
    for name in ("general.jsonl", "domain.jsonl"):
        rows = corpus.read_jsonl(ci_family.data / name)
        assert rows and all([x["role"] for x in r["messages"]] == ["system", "user", "assistant"] for r in rows)
    assert corpus.read_jsonl(ci_family.data / "kto.jsonl") == corpus.kto_rows(
        corpus.read_jsonl(ci_family.data / "preference.jsonl")
    )
    for suite in corpus.SUITES:
        assert (ci_family.data / "eval" / f"{suite}.jsonl").read_bytes() == (SUITE_DATA / f"{suite}.jsonl").read_bytes()
    assert not list(ci_family.root.parent.glob(".*tmp*"))


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its (inode, mtime): a rebuild or reinstall renames a new tree into place."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _no_build_or_install(monkeypatch) -> None:
    """Tripwires on the two ways a family is made (training it, copying the shipped one)."""
    import shadowft.zoo.build
    import shadowft.zoo.shipped

    def tripped(*a, **k):
        raise AssertionError("the family was made again")

    monkeypatch.setattr(shadowft.zoo.build, "_build", tripped)
    monkeypatch.setattr(shadowft.zoo.shipped, "install_shipped", tripped)


def test_bf16_autocast_only_where_the_cpu_does_bf16_natively(ci_family):
    """The recipe asks for bf16 autocast; on an AVX2-only CPU (CI's) emulated bf16 made a rebuild 20x
    slower than fp32 (over an hour), so such a build runs fp32 and its manifest says which ran."""
    from shadowft.zoo.build import FamilyConfig, autocast_bf16, cpu_has_native_bf16

    native = cpu_has_native_bf16()
    assert native == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert autocast_bf16(FamilyConfig()) is native
    assert autocast_bf16(FamilyConfig(bf16_autocast=False)) is False
    assert ci_family.read_manifest()["autocast"] == ("bf16" if native else "fp32")


def test_cached_family_is_returned_at_once(ci_family, monkeypatch):
    """Served from the cache: neither trained nor copied, not a file touched (its speed: benchmarks/zoo.py)."""
    before, inode = _files(ci_family.root), ci_family.root.stat().st_ino
    _no_build_or_install(monkeypatch)
    again = build_family(ci_family.root, seed=3, preset="ci", progress=False)
    assert again.root == ci_family.root and ci_family.root.stat().st_ino == inode
    assert _files(ci_family.root) == before
    assert not list(ci_family.root.parent.glob(f".{ci_family.root.name}.*"))


def test_a_different_family_in_the_same_dir_is_refused(ci_family):
    from shadowft.errors import ShadowFTError

    with pytest.raises(ShadowFTError, match="different toy family"):
        build_family(ci_family.root, seed=4, preset="ci", progress=False)


@pytest.mark.slow
def test_same_seed_gives_bit_identical_weights(tmp_path, ci_family):
    other = build_family(tmp_path / "again", seed=3, preset="ci", progress=False)
    for name in ("base", "instruct"):
        a = (getattr(ci_family, name) / "model.safetensors").read_bytes()
        b = (getattr(other, name) / "model.safetensors").read_bytes()
        assert a == b, name
    assert (ci_family.data / "general.jsonl").read_bytes() == (other.data / "general.jsonl").read_bytes()


def test_an_instruct_variant_with_the_familys_own_post_training_is_its_instruct(tmp_path, ci_family):
    """build_instruct_variant (experiment v3's pairs at other sigmas) repeats the family's own Instruct
    phase from the saved Base: with the family's spec the weights are the same bits; less post-training
    gives a pair nearer Base."""
    from shadowft.errors import ShadowFTError
    from shadowft.zoo.build import FamilyConfig, build_instruct_variant

    spec = FamilyConfig.model_validate(ci_family.read_manifest()["config"]).sft
    same = build_instruct_variant(ci_family, tmp_path / "same", spec, seed=3, progress=False)
    assert (tmp_path / "same" / "model.safetensors").read_bytes() == (
        ci_family.instruct / "model.safetensors"
    ).read_bytes()
    less = build_instruct_variant(
        ci_family, tmp_path / "less", spec.model_copy(update={"lr": spec.lr / 10}), seed=3, progress=False
    )
    assert 0 < less["sigma_to_base"] < same["sigma_to_base"]
    assert less["sigma_to_base"] == pytest.approx(_sigma_mean(ci_family.base, tmp_path / "less"), rel=1e-5)
    assert json.loads((tmp_path / "less" / "variant.json").read_text())["sft"]["lr"] == spec.lr / 10
    with pytest.raises(ShadowFTError, match="not empty"):
        build_instruct_variant(ci_family, tmp_path / "less", spec, seed=3, progress=False)


@pytest.mark.slow
def test_cli_zoo_build(tmp_path):
    from typer.testing import CliRunner

    from shadowft.cli import app

    result = CliRunner().invoke(app, ["zoo", "build", "--out", str(tmp_path / "fam"), "--preset", "ci"])
    assert result.exit_code == 0, result.output
    assert "sigma(base, instruct)" in result.output
    assert (tmp_path / "fam" / "family.json").exists()


# ------------------------------------------------------------------------ the shipped default family


def test_shipped_family_is_the_current_default_build():
    """The package ships the default family built with today's version and config (re-export after a change)."""
    from shadowft.zoo.build import FAMILY_VERSION, FamilyConfig
    from shadowft.zoo.shipped import file_checksums, find_shipped, shipped_dir

    root = find_shipped(FAMILY_VERSION, "default", 0, FamilyConfig().model_dump())
    assert root is not None, (
        f"no shipped family matches {FAMILY_VERSION}; rebuild it and run python -m shadowft.zoo.shipped DIR"
    )
    manifest = json.loads((root / "family.json").read_text())
    assert manifest["checksums"] == file_checksums(shipped_dir(FAMILY_VERSION, "default", 0))
    for suite in corpus.SUITES:  # the shipped eval data is the committed suite data
        assert (root / "data" / "eval" / f"{suite}.jsonl").read_bytes() == (SUITE_DATA / f"{suite}.jsonl").read_bytes()


def test_default_family_installs_from_the_package_as_a_copy(tmp_path, monkeypatch):
    """A copy of the shipped files, not a training run (its speed: benchmarks/zoo.py)."""
    import shadowft.zoo.build

    def no_training(*a, **k):
        raise AssertionError("the default family was trained instead of installed")

    monkeypatch.setattr(shadowft.zoo.build, "_build", no_training)
    fam = build_family(tmp_path / "fam", seed=0, progress=False)
    m = fam.read_manifest()
    assert m["source"] == "shipped"
    from shadowft.zoo.build import FamilyConfig
    from shadowft.zoo.shipped import file_checksums

    assert m["config"] == FamilyConfig().model_dump()

    assert file_checksums(fam.root) == m["checksums"]
    assert not list(tmp_path.glob(".*tmp*"))


def test_the_kto_set_is_the_preference_set_one_completion_per_prompt(tmp_path):
    """`zoo:kto`: pair i's chosen reply as desirable (even i) or its rejected one as undesirable (odd i),
    in the shipped copy as in a build (the same function writes both)."""
    from shadowft.stages import zoo_placeholders
    from shadowft.zoo.build import FAMILY_VERSION
    from shadowft.zoo.shipped import shipped_dir

    root = shipped_dir(FAMILY_VERSION, "default", 0)
    pref, kto = corpus.read_jsonl(root / "data" / "preference.jsonl"), corpus.read_jsonl(root / "data" / "kto.jsonl")
    assert kto == corpus.kto_rows(pref) and len(kto) == len(pref)
    assert [r["label"] for r in kto[:4]] == [True, False, True, False]
    assert kto[0]["completion"] == pref[0]["chosen"] and kto[1]["completion"] == pref[1]["rejected"]
    # a pair gives one row: neighbours (KTO's KL estimate pairs them) ask different questions, but for
    # the generator's few chance repeats
    assert sum(a["prompt"] == b["prompt"] for a, b in zip(kto, kto[1:], strict=False)) <= len(kto) // 100
    assert zoo_placeholders(root)["kto"] == root / "data" / "kto.jsonl"


def test_an_install_older_than_the_shipped_copy_is_refreshed(tmp_path):
    """A family installed before a data set was added (as the KTO set was) is installed again."""
    fam = build_family(tmp_path / "fam", seed=0, progress=False)
    (fam.data / "kto.jsonl").unlink()
    manifest = fam.read_manifest()
    del manifest["checksums"]["data/kto.jsonl"]
    fam.manifest.write_text(json.dumps(manifest))
    again = build_family(tmp_path / "fam", seed=0, progress=False)
    assert (again.data / "kto.jsonl").is_file() and "data/kto.jsonl" in again.read_manifest()["checksums"]


def test_a_damaged_shipped_family_is_refused(tmp_path):
    import shutil

    from shadowft.errors import ShadowFTError
    from shadowft.zoo.build import FAMILY_VERSION
    from shadowft.zoo.shipped import install_shipped, shipped_dir

    src = tmp_path / "src"
    shutil.copytree(shipped_dir(FAMILY_VERSION, "default", 0), src)
    weights = src / "instruct" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    (tmp_path / "dest").mkdir()
    with pytest.raises(ShadowFTError, match="damaged.*instruct/model.safetensors"):
        install_shipped(src, tmp_path / "dest")


# ---------------------------------------------------------------------------- skill requirements


def assert_family_skills(fam: FamilyPaths, margin: float = 0.15) -> dict[str, dict[str, float]]:
    """What makes the family a real instance of the problem, for the shipped copy and any rebuild.

    Instruct at least `margin` above chance on every old skill and within (10 %, 90 %); Base
    clearly lower in chat format; the new domain skill unknown to both; sigma in the real range.
    """
    from shadowft.zoo.score import score_model

    scores = {name: score_model(getattr(fam, name)) for name in ("base", "instruct")}
    inst, base = scores["instruct"], scores["base"]
    for suite in ("toy_math", "toy_coding", "toy_reasoning"):  # every suite measures a skill
        chance = corpus.CHANCE[suite]
        assert inst[suite] >= chance + margin, (suite, scores)
        assert 0.10 <= inst[suite] <= 0.90, (suite, scores)
        assert inst[suite] >= base[suite] + 0.1, (suite, scores)
    assert inst["toy_domain"] < 0.15, scores  # the new skill is unknown before tuning
    assert 0.005 <= _sigma_mean(fam.base, fam.instruct) <= 0.08
    return scores


@pytest.mark.slow
def test_shipped_family_has_every_skill(zoo_family):
    assert zoo_family.read_manifest()["source"] == "shipped"
    assert_family_skills(zoo_family)


@pytest.mark.rebuild
def test_a_rebuild_from_scratch_meets_the_same_requirements(tmp_path):
    """Trains the default family on this machine's CPU (weights differ slightly by CPU): about 5 minutes
    with native bf16, about 18 on an AVX2-only CPU such as CI's, so it is opt-in (`make test-rebuild`)."""
    fam = build_family(tmp_path / "rebuilt", seed=0, progress=False, from_scratch=True)
    assert fam.read_manifest()["source"] == "built"
    assert_family_skills(fam)


@pytest.mark.slow
def test_the_domain_skill_is_learnable_in_the_comparisons_budget(zoo_family, tmp_path):
    """Direct LoRA tuning of Instruct on domain + replay, as in examples/compare-toy-domain.yaml (two
    epochs of 16 = 476 steps, lr 1e-3), moves toy-domain from under 15 % to at least 30 %."""
    from shadowft.config import DataConfig, TrainConfig
    from shadowft.data import prepare_dataset
    from shadowft.graft import graft
    from shadowft.train import train_model
    from shadowft.zoo.score import score_model

    data = tmp_path / "data"
    prepare_dataset(
        DataConfig(
            sources=[str(zoo_family.data / "domain.jsonl"), str(zoo_family.data / "general.jsonl")],
            max_length=256,
            max_samples=None,
            validation_ratio=0.05,
        ),
        zoo_family.instruct,
        data,
    )
    spec = TrainConfig(
        method="lora", epochs=2, batch_size=16, grad_accum=1, lr=1e-3, lora_rank=8, warmup_ratio=0.1, seed=0
    )
    train_model(zoo_family.instruct, data, spec, tmp_path / "adapter", tmp_path / "work")

    graft(zoo_family.instruct, tmp_path / "tuned", adapter=tmp_path / "adapter")
    before = score_model(zoo_family.instruct, ("toy_domain",))["toy_domain"]
    after = score_model(tmp_path / "tuned", ("toy_domain",))["toy_domain"]
    assert before < 0.15 and after >= 0.30, (before, after)
