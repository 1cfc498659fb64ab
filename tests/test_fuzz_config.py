"""Fuzz targets: the YAML config loaders (`load_config`, `load_compare_config`) and `--set` overrides.

Inputs are mutations of the shipped example configs: structural (a value anywhere replaced by a
hostile one: nan, inf, huge or negative numbers, NUL bytes, long strings, wrong types, nested
containers; keys deleted or added), textual (bytes deleted, YAML syntax inserted, lines repeated)
and alias-heavy documents (nested anchors, recursive aliases). Every input must end in a loaded config or
a clean `ShadowFTError` (what the CLI prints as `error:`), within a deadline: never another exception, a
hang, or an accepted config holding a value that cannot be used (non-finite float) or that does not
survive its own YAML round trip.

CI runs a bounded pass (`FUZZ_EXAMPLES` per target, derandomized so a run is reproducible); a longer,
random one: `SHADOWFT_FUZZ_EXAMPLES=5000 pytest -q tests/test_fuzz_config.py -s` (prints the count).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowft.compare import load_compare_config
from shadowft.config import RunConfig, load_config
from shadowft.errors import ShadowFTError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
RUN_SEEDS = [EXAMPLES / n for n in ("toy.yaml", "toy-dpo.yaml", "qwen3-4b-lora.yaml", "llama-3.1-8b-lora.yaml")]
COMPARE_SEEDS = sorted(EXAMPLES.glob("compare-*.yaml"))

_LONG = "SHADOWFT_FUZZ_EXAMPLES" in os.environ
FUZZ_EXAMPLES = int(os.environ.get("SHADOWFT_FUZZ_EXAMPLES", "600"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=3000,  # ms per input: a hang (an alias bomb took minutes) fails the test
    derandomize=not _LONG,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TRIED: dict[str, list[int]] = {}  # target -> [inputs, loaded, refused]


def _tally(target: str, loaded: bool) -> None:
    t = TRIED.setdefault(target, [0, 0, 0])
    t[0] += 1
    t[1 if loaded else 2] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    import shutil

    for d in _tmp_dir:
        shutil.rmtree(d, ignore_errors=True)
    for target, (n, ok, refused) in TRIED.items():
        print(f"\nfuzz {target}: {n} inputs, {ok} loaded, {refused} refused with a ShadowFTError")


# -- hostile values and mutations ---------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, 10**20, -(10**20)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 1e-320, -0.0, 1e18]),
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "a\x00b", "auto", "zoo:", "zoo:nope", "x" * 300, "../" * 50, "(", "*"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in the loaded YAML tree (mapping keys and list indexes)."""
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


def _set(data: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    node = data
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@st.composite
def structural(draw: st.DrawFn, seeds: list[Path]) -> str:
    """A seed config with 1-4 values replaced by hostile ones, keys deleted, or unknown keys added."""
    data = yaml.safe_load(draw(st.sampled_from(seeds)).read_text())
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if op == "delete" and path:
            data = _set(data, path, None, delete=True)
        elif op == "add":
            node = data
            for k in path:
                node = node[k]
            if isinstance(node, dict):
                node[draw(st.text(max_size=10))] = draw(VALUES)
        else:
            data = _set(data, path, draw(VALUES))
    return yaml.safe_dump(data, allow_unicode=draw(st.booleans()))


YAML_BITS = st.sampled_from(
    ["&a ", "*a", "[", "]", "{", "}", ": ", "- ", "!!python/object:os.system ", "!!binary ", "!!set ", "!!float ",
     "? ", "|", ">", "'", '"', "#", "\n", "  ", "\t", "%YAML 1.1\n", "---\n", "...\n", ".nan", ".inf", "-.inf",
     "1e999", "0x1F", "0o17", "1_000", "~", "null", "yes", "2001-12-14t21:59:43.10-05:00", "<<: ", "\\x00", "\ufeff"]
)  # fmt: skip


@st.composite
def textual(draw: st.DrawFn, seeds: list[Path]) -> str:
    """A seed config's text with 1-6 edits: a span deleted, YAML syntax or random text inserted, a line
    repeated."""
    text = draw(st.sampled_from(seeds)).read_text()
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "insert", "random", "line"]))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)) :]
        elif op == "insert":
            text = text[:i] + draw(YAML_BITS) + text[i:]
        elif op == "random":
            text = text[:i] + draw(st.text(max_size=8)) + text[i:]
        else:
            lines = text.splitlines(keepends=True) or [""]
            j = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: j + 1] + [lines[j]] * draw(st.integers(1, 3)) + lines[j + 1 :])
    return text


@st.composite
def aliased(draw: st.DrawFn) -> str:
    """Nested anchors and aliases under real fields: from harmless reuse to exponential expansion, and
    aliases that refer to their own node."""
    depth, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    field = draw(st.sampled_from(["eval:\n  suites:", "data:\n  sources:", "graft:\n  alpha_grid:", "baselines:"]))
    leaf = draw(st.sampled_from(["x", "toy-math", "0.5", "instruct", "[x]", "{a: 1}"]))
    lines = [field, f"    - &a0 [{', '.join([leaf] * width)}]"]
    lines += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    if draw(st.booleans()):
        lines.append(f"    - &r [*a{depth - 1}, *r]")
    return "\n".join(lines) + "\n"


# -- the property ----------------------------------------------------------------------------------


def _finite(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    if isinstance(v, list):
        return all(_finite(x) for x in v)
    return True


def _check(target: str, load, text: str, tmp: Path) -> None:
    """`load(file)` ends in a config or a ShadowFTError; an accepted config is finite and round-trips."""
    p = tmp / "fuzz.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load(p)
    except ShadowFTError as exc:
        assert exc.message.strip(), "an error without a message"
        _tally(target, False)
        return
    _tally(target, True)
    dumped = cfg.model_dump(mode="python")
    assert _finite(dumped), f"accepted a non-finite value: {dumped}"
    if isinstance(cfg, RunConfig):
        p.write_text(cfg.to_yaml(), encoding="utf-8")
        assert load(p) == cfg, "an accepted config does not survive its YAML round trip"


@pytest.mark.slow
@FUZZ
@given(text=st.one_of(structural(RUN_SEEDS), textual(RUN_SEEDS), aliased()))
def test_fuzz_run_config_loader(text):
    _check("load_config", load_config, text, _TMP())


@pytest.mark.slow
@FUZZ
@given(text=st.one_of(structural(COMPARE_SEEDS), textual(COMPARE_SEEDS)))
def test_fuzz_compare_config_loader(text):
    _check("load_compare_config", load_compare_config, text, _TMP())


OVERRIDE_KEYS = st.sampled_from(
    ["train.lr", "train.seed", "train.batch_size", "graft.alpha", "graft.alpha_by_module", "eval.suites",
     "output.name", "output.root", "data.sources", "train.node_rank", "pair", "train", "x.y", "train.lr.x", "a..b"]
)  # fmt: skip


@FUZZ
@given(key=OVERRIDE_KEYS, value=st.one_of(YAML_BITS, st.text(max_size=30), VALUES.map(lambda v: yaml.safe_dump(v))))
def test_fuzz_overrides(key, value):
    """`--set key=value` with hostile values, applied to the defaults."""
    text = f"{key}={value}".replace("\n", " ")
    try:
        cfg = load_config(None, [text])
    except ShadowFTError:
        _tally("overrides", False)
        return
    _tally("overrides", True)
    assert _finite(cfg.model_dump(mode="python"))


_tmp_dir: list[Path] = []


def _TMP() -> Path:  # noqa: N802 - one scratch dir per module (hypothesis reruns a test many times)
    if not _tmp_dir:
        import tempfile

        _tmp_dir.append(Path(tempfile.mkdtemp(prefix="shadowft-fuzz-")))
    return _tmp_dir[0]


def test_shadowft_run_refuses_an_alias_bomb_without_traceback(tmp_path):
    """`shadowft run` on a config with nested anchors under eval.suites hung for minutes, eating GBs."""
    lines = ["eval:", "  suites:", "    - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "shadowft", "run", str(p)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "aliases expand to more than" in r.stderr and str(p) in r.stderr
