"""Convert a GGUF checkpoint into a normal Hugging Face model directory (safetensors + tokenizer).

transformers dequantizes GGUF weights on load (`gguf_file=`, needs the `gguf` package); the result
is saved with `save_pretrained`, so every other stage (pair check, graft, lm-eval) reads it as any
other model dir. Quantized weights come back as float32 (or `dtype`), not bit-identical to the
original unquantized release.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from shadowft.errors import CheckpointError, OutputExistsError


def gguf_to_model_dir(gguf_path: Path, out_dir: Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Load `gguf_path` with transformers and write `out_dir` (config, safetensors, tokenizer).

    The directory is written beside `out_dir` and published by an atomic rename.
    """
    gguf_path = Path(gguf_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser()
    if not gguf_path.is_file():
        raise CheckpointError(f"GGUF file {gguf_path} does not exist")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out_dir} exists and is not empty", hint="choose another output dir")
        shutil.rmtree(out_dir)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise CheckpointError("reading GGUF needs the `gguf` package", hint="pip install gguf") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    except Exception as exc:
        raise CheckpointError(
            f"transformers could not load {gguf_path}: {type(exc).__name__}: {exc}",
            hint="transformers reads GGUF for a set of architectures and quantization types only",
        ) from exc
    # The weights are already dequantized; drop the GGUF marker so that save_pretrained writes them.
    model.hf_quantizer = None  # type: ignore[assignment]
    for obj in (model, model.config):
        for attr in ("is_quantized", "quantization_method"):
            if hasattr(obj, attr):
                setattr(obj, attr, False if attr == "is_quantized" else None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.chmod(0o755)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
