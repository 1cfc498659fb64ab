"""The run config: published defaults, YAML + overrides, errors that name the key, cache views."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from shadowft.config import (
    DEFAULT_LORA_TARGETS,
    STAGES,
    DataConfig,
    RunConfig,
    TrainConfig,
    load_config,
    parse_override,
)
from shadowft.errors import ShadowFTError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_defaults_are_the_papers():
    c = RunConfig()
    t = c.train
    assert (t.method, t.effective_lr, t.lora_rank, t.effective_lora_alpha, t.lora_dropout) == ("lora", 2e-4, 8, 16, 0.0)
    assert t.lora_targets == DEFAULT_LORA_TARGETS and "lm_head" not in t.lora_targets
    assert TrainConfig(method="full").effective_lr == 1e-5
    assert (t.epochs, t.scheduler, t.warmup_ratio) == (1.0, "cosine", 0.1)
    assert (c.data.max_length, c.data.max_samples) == (4096, 2000)
    assert (c.graft.alpha, c.graft.scope) == (1.0, "projections")
    assert c.eval.suites == ["toy-math", "toy-coding", "toy-reasoning"]
    assert c.baselines == ["instruct", "direct"]
    assert c.output.root == "./runs"
    assert TrainConfig(lora_rank=16).effective_lora_alpha == 32


def test_every_field_is_described_for_the_ui_form():
    def walk(model, prefix):
        for name, f in model.model_fields.items():
            assert f.description, f"{prefix}{name} has no description"
            sub = getattr(f.annotation, "model_fields", None)
            if sub is not None:
                walk(f.annotation, f"{prefix}{name}.")

    walk(RunConfig, "")
    schema = RunConfig.model_json_schema()
    assert schema["$defs"]["TrainConfig"]["properties"]["lr"]["description"]


def test_yaml_with_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  method: full\n  lr: 2e-5\ndata:\n  sources: [a.jsonl]\n")
    c = load_config(p, ["train.lr=3e-5", "eval.suites=[gsm8k, bbh]", "data.max_samples=null", "graft.alpha=0.5"])
    assert c.train.method == "full" and c.train.lr == pytest.approx(3e-5)
    assert c.eval.suites == ["gsm8k", "bbh"] and c.data.max_samples is None and c.graft.alpha == 0.5
    assert c.data.sources == ["a.jsonl"]
    # YAML 1.1 reads "2e-5" as a string; the model still takes it as a number
    assert load_config(p).train.lr == pytest.approx(2e-5)
    assert load_config(None, []) == RunConfig()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr=0", "train.lr: must be greater than 0"),
        ("train.lr=-1e-4", "train.lr: must be greater than 0.0 (got -0.0001)"),  # a number, not '-1e-4'
        ("graft.alpha=2e1", "graft.alpha: must be at most 10 (or auto) (got 20.0)"),
        ("train.lora_rank=0", "train.lora_rank: must be at least 1"),
        ("graft.alpha=0", "graft.alpha: must be greater than 0"),
        ("graft.alpha=10.5", "graft.alpha: must be at most 10"),
        ("train.method=qlora", "train.method: must be one of 'lora' or 'full'"),
        ("train.warmup_ratio=1", "train.warmup_ratio: must be less than 1"),
        ("data.overlong=skip", "data.overlong: must be one of"),
        ("data.sources=[]", "data.sources: must not be empty"),
        ("baselines=[instruct, shadow]", "baselines.1: must be one of"),
        ("graft.scope=([", "graft.scope: not 'projections', 'all' or a valid regular expression"),
        (
            "graft.per_module.alpha_by_module={'(': 0.5}",
            "graft.per_module.alpha_by_module: '(' is not a valid regular expression",
        ),
        (
            "graft.per_module.alpha_by_module={mlp: .nan}",
            "graft.per_module.alpha_by_module: alpha of 'mlp' must be a finite number",
        ),
        ("graft.method=tie", "graft.method: unknown graft method 'tie' (did you mean 'ties'?)"),
        ("train.lora_targets=[q_proj, lm_head]", "train.lora_targets: lm_head is not adapted"),
        ("train.lrr=1e-4", "train.lrr: unknown key (did you mean 'lr'?)"),
        ("trian.lr=1e-4", "trian: unknown key (did you mean 'train'?)"),
    ],
)
def test_errors_name_the_key(override, expected):
    with pytest.raises(ShadowFTError) as ei:
        load_config(None, [override])
    assert expected in ei.value.message
    assert f"[from override {override!r}]" in ei.value.message


def test_file_errors_name_the_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  lr: 0\n  epochs: 1\npair:\n  bse: x\n")
    with pytest.raises(ShadowFTError) as ei:
        load_config(p)
    msg = ei.value.message
    assert str(p) in msg and "train.lr: must be greater than 0" in msg
    assert "pair.bse: unknown key (did you mean 'base'?)" in msg

    p.write_text("train:\n  lr: [1\n  epochs: 1\n")
    with pytest.raises(ShadowFTError, match=re.escape(str(p)) + r" line \d+: invalid YAML"):
        load_config(p)
    with pytest.raises(ShadowFTError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ShadowFTError, match="key.sub=value"):
        parse_override("train.lr")


def test_examples_load_and_toy_documents_every_key():
    for name in (
        "toy.yaml",
        "qwen3-4b-lora.yaml",
        "qwen3-4b-full.yaml",
        "llama-3.1-8b-lora.yaml",
        "gemma-3-4b-lora.yaml",
        "toy-vlm.yaml",
    ):
        load_config(EXAMPLES / name)
    vlm = load_config(EXAMPLES / "toy-vlm.yaml")
    assert vlm.placeholders() == ["zoo:vlm-base", "zoo:vlm-instruct", "zoo:vlm-chart"]
    g = load_config(EXAMPLES / "gemma-3-4b-lora.yaml")
    assert (g.pair.base, g.eval.backend, g.train.freeze_vision_tower) == ("google/gemma-3-4b-pt", "hf-multimodal", True)
    q = load_config(EXAMPLES / "qwen3-4b-lora.yaml")
    assert (q.pair.base, q.pair.instruct) == ("Qwen/Qwen3-4B-Base", "Qwen/Qwen3-4B-Instruct-2507")
    assert load_config(EXAMPLES / "qwen3-4b-full.yaml").train.effective_lr == 1e-5
    ll = load_config(EXAMPLES / "llama-3.1-8b-lora.yaml")
    assert (ll.pair.base, ll.pair.instruct) == ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct")

    text = (EXAMPLES / "toy.yaml").read_text()
    raw = yaml.safe_load(text)
    for section, model in RunConfig.model_fields.items():
        assert section in raw, f"toy.yaml lacks section {section}"
        sub = getattr(model.annotation, "model_fields", None)
        if sub:
            assert set(raw[section]) == set(sub), f"toy.yaml {section}: keys differ from the model"
    for line in text.splitlines():
        if re.match(r"^\s+\w+:", line):
            assert "#" in line, f"toy.yaml key without a comment: {line!r}"


def test_placeholders_resolve(tmp_path):
    c = load_config(EXAMPLES / "toy.yaml")
    assert c.placeholders() == ["zoo:base", "zoo:instruct", "zoo:general"]
    r = c.resolve({"base": tmp_path / "b", "instruct": tmp_path / "i", "general": tmp_path / "t.jsonl"})
    assert r.pair.base == str(tmp_path / "b") and r.data.sources == [str(tmp_path / "t.jsonl")]
    assert r.placeholders() == []
    with pytest.raises(ShadowFTError, match="unknown placeholder 'zoo:general'"):
        c.resolve({"base": "b", "instruct": "i"})


def test_stage_specs_own_the_cache_keys(tmp_path):
    """One owner per key: each stage spec keys its section's `cache_view` (+ what the spec adds)."""
    from shadowft.stages import eval_spec, pair_spec, report_spec, train_spec
    from shadowft.store import Artifact, ArtifactStore

    a = RunConfig()
    assert set(STAGES) >= {"pair", "data", "train", "graft", "eval", "report"} and "direct" not in STAGES
    assert not hasattr(a, "stage_view")  # the second owner, which disagreed with the specs, is gone
    b = load_config(None, ["train.lr=2e-4", "train.lora_alpha=16", "train.save_steps=7", "eval.batch_size=2"])
    assert a.train.cache_view() == b.train.cache_view() and a.eval.cache_view() == b.eval.cache_view()
    c = load_config(None, ["train.lr=1e-4"])
    assert a.train.cache_view() != c.train.cache_view()
    assert a.data.cache_view() == c.data.cache_view() and a.graft.cache_view() == c.graft.cache_view()
    d = load_config(None, ["data.max_length=512"])
    assert a.data.cache_view() != d.data.cache_view() and a.train.cache_view() == d.train.cache_view()
    full = load_config(None, ["train.method=full"]).train.cache_view()
    assert "lora_rank" not in full and full["lr"] == 1e-5
    assert load_config(None, ["train.method=full", "train.lora_rank=64"]).train.cache_view() == full
    # the specs key exactly those views
    model, data = tmp_path / "m", Artifact(stage="data", key="k", path=tmp_path, build_id="b")
    model.mkdir()
    store = ArtifactStore(tmp_path / "store")
    assert train_spec(b.train, model, data, store).config == a.train.cache_view()
    assert eval_spec(b.eval, model).config == {**a.eval.cache_view(), "code": False}
    # pair.force is keyed (a forced check records "(forced)" in pair.json); report keys its models and title
    pair = pair_spec(a.pair, model, model, "projections")
    assert pair.config == {
        "max_sigma": a.pair.max_sigma,
        "force": False,
        "scope": "projections",
        "trust_remote_code": False,
    }
    assert pair_spec(a.pair.model_copy(update={"force": True}), model, model, "projections").key != pair.key
    evals = {"instruct": Artifact(stage="eval", key="e", path=tmp_path, build_id="b")}
    report = report_spec(evals, title="T")
    assert report.config == {"models": ["instruct"], "title": "T"} and report_spec(evals, title="U").key != report.key


def test_yaml_round_trip(tmp_path):
    c = load_config(None, ["train.method=full", "data.sources=[x.jsonl, y.parquet]", "graft.scope=.*mlp.*"])
    p = tmp_path / "c.yaml"
    p.write_text(c.to_yaml())
    assert load_config(p) == c


def test_same_model_twice_is_an_error():
    with pytest.raises(ShadowFTError, match="same model"):
        load_config(None, ["pair.base=org/m", "pair.instruct=org/m"])


def test_sections_forbid_unknown_keys_directly():
    with pytest.raises(Exception, match="extra"):
        DataConfig(sources=["a"], cutoff=3)


def test_graft_method_settings_and_cache_keys(llama_trio):
    from shadowft.stages import graft_spec
    from shadowft.store import Artifact

    a = RunConfig()
    assert a.graft.cache_view() == {"alpha": 1.0, "scope": "projections"}  # keys of existing artifacts unchanged
    linear = load_config(None, ["graft.method=linear"])
    attn = "q_proj|k_proj|v_proj|o_proj"
    pm = load_config(None, [f"graft.alpha_by_module={{'{attn}': 0.5, mlp: 1.0}}"])
    swapped = load_config(None, [f"graft.alpha_by_module={{mlp: 1.0, '{attn}': 0.5}}"])
    assert pm.graft.effective_method == "per_module" and list(pm.graft.method_settings["alpha_by_module"]) == [
        attn,
        "mlp",
    ]
    assert pm.graft.cache_view() == {
        "alpha": 1.0,
        "scope": "projections",
        "method": "per_module",
        "alpha_by_module": [[attn, 0.5], ["mlp", 1.0]],
    }
    assert linear.graft.cache_view() == a.graft.cache_view() != pm.graft.cache_view()
    assert swapped.graft.cache_view() != pm.graft.cache_view()  # the first matching rule wins: order counts
    with pytest.raises(ShadowFTError, match="graft.per_module is set but graft.method is linear"):
        load_config(None, ["graft.method=linear", "graft.alpha_by_module={mlp: 0.5}"])
    # the pipeline's graft stage keys on the same view
    update = Artifact(stage="delta", key="k", path=llama_trio["base"], build_id="b")
    keys = {
        name: graft_spec(c.graft, llama_trio["instruct"], update).key
        for name, c in {"default": a, "linear": linear, "per_module": pm, "swapped": swapped}.items()
    }
    assert keys["default"] == keys["linear"] and len(set(keys.values())) == 3
    assert graft_spec(pm.graft, llama_trio["instruct"], update).config == pm.graft.cache_view()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("graft.alpha=.nan", "graft.alpha: must be a finite number"),
        ("graft.alpha=.inf", "graft.alpha: must be a finite number"),
        ("train.lr=.inf", "train.lr: must be a finite number"),
        ("train.epochs=.nan", "train.epochs: must be a finite number"),
        ("train.seed=-1", "train.seed: must be at least 0"),
        (f"train.seed={2**32}", "train.seed: must be at most 4294967295"),
        ("train.batch_size=1e18", "train.batch_size: must be at most 65536 (got 1e+18)"),
        (f"train.batch_size={10**20}", "train.batch_size: must be at most 65536"),
        ("eval.batch_size=1e18", "eval.batch_size: must be at most 65536"),
        ("train.weight_decay=.inf", "train.weight_decay: must be a finite number"),
        ('output.name="run\\0x"', "output.name: must not contain a NUL character"),
        ("train.node_rank=2", "train.node_rank: must be less than train.num_nodes (1)"),
        ("output.name=" + "n" * 300, "output.name: must be at most 200 characters"),
        ("output.root=/tmp/" + "r" * 300, "output.root: the path component"),
    ],
)
def test_values_that_would_fail_late_are_refused_at_load(override, expected):
    """Each was accepted and failed only later (after training, in 4 tracebacks, after evaluation) or
    not at all; now the config refuses it, naming the key, before any stage."""
    with pytest.raises(ShadowFTError) as ei:
        load_config(None, [override])
    assert expected in ei.value.message
    assert f"[from override {override!r}]" in ei.value.message


def test_node_rank_within_num_nodes_is_accepted():
    assert load_config(None, ["train.num_nodes=2", "train.node_rank=1"]).train.node_rank == 1


def test_yaml_alias_bomb_is_refused_quickly_naming_the_file(tmp_path):
    """Nested anchors under a real field (eval.suites) expand to 10^9 strings: refused while loading, in
    well under a second, with a message naming the file; a recursive alias too."""
    import time

    lines = ["eval:", "  suites:", "    - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ShadowFTError) as ei:
        load_config(p)
    assert time.perf_counter() - t0 < 5
    assert str(p) in ei.value.message and "aliases expand to more than" in ei.value.message

    p.write_text("eval:\n  suites: &s [toy-math, *s]\n")
    with pytest.raises(ShadowFTError, match=re.escape(str(p)) + r".*refers to itself"):
        load_config(p)

    # a few ordinary anchors still work
    p.write_text("eval:\n  suites: &s [toy-math]\ngraft:\n  retention: {toy-math: 2}\n  alpha_grid: &g [0.5, 1.0]\n")
    assert load_config(p).eval.suites == ["toy-math"]


@pytest.mark.parametrize(
    "text",
    [
        "train:\n  lr: !!float ''\n",  # PyYAML: IndexError
        "train:\n  seed: !!timestamp x\n",  # PyYAML: AttributeError
        "eval:\n  suites: " + "[" * 3000 + "]" * 3000 + "\n",  # PyYAML: RecursionError
        "train:\n  lr: 1e-4\n\udcff\n",  # not UTF-8 (written with surrogatepass)
    ],
)
def test_yaml_the_parser_chokes_on_is_a_clean_error(tmp_path, text):
    """Found by tests/test_fuzz_config.py: each raised a Python exception other than a YAML error."""
    p = tmp_path / "c.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(ShadowFTError, match=re.escape(str(p))):
        load_config(p)
