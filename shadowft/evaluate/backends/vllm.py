"""lm-eval's `vllm` backend: vLLM's engine (paged attention, continuous batching, tensor and data
parallel) under lm-eval's own `vllm` model; shadowft only chooses its arguments.

vLLM is a CUDA build and an optional extra (`pip install 'shadowft[vllm]'`). `preflight` refuses
the backend before any stage runs when vLLM is not importable, when there are fewer GPUs than
tensor x data parallel needs, or when data parallel lacks Ray (lm-eval dispatches it through Ray).
`check_vllm_layout` checks a model directory against what vLLM reads, with no vLLM needed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from shadowft.errors import EvalError
from shadowft.evaluate.backends.base import EvalBackend, LoadedModel, thinking_args
from shadowft.registry import SettingsModel

MAX_PROCS = 1024
INSTALL_HINT = "install the extra on a CUDA machine (pip install 'shadowft[vllm]'), or use eval.backend=hf"


class VLLMSettings(SettingsModel):
    """lm-eval's `vllm` model arguments (passed as they are; see lm-eval's VLLM class); all are recorded."""

    tensor_parallel_size: int = Field(
        default=1, ge=1, le=MAX_PROCS, description="GPUs one model replica is split over."
    )
    data_parallel_size: int = Field(default=1, ge=1, le=MAX_PROCS, description="Model replicas, each on its own GPUs.")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Fraction of each GPU's memory vLLM may take."
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=1 << 24, description="Context length vLLM allocates for; empty = the model's own."
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="Weights dtype in vLLM; auto = as stored."
    )


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without torch's CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class VLLMBackend(EvalBackend):
    """vLLM's engine under lm-eval's `vllm` model (needs the `vllm` extra and a GPU)."""

    name = "vllm"
    Settings = VLLMSettings
    config: VLLMSettings
    #: the lm-eval model `load` builds
    lm_eval_model = "vllm"

    @classmethod
    def devices(cls, settings: BaseModel) -> int:
        """tensor_parallel_size x data_parallel_size."""
        s = VLLMSettings.model_validate(settings, from_attributes=True)
        return s.tensor_parallel_size * s.data_parallel_size

    #: The backend that runs the same models without vLLM (named in the refusals' hints).
    cpu_backend: ClassVar[str] = "hf"

    def preflight(self) -> None:
        name, other = self.name, self.cpu_backend
        if importlib.util.find_spec("vllm") is None:
            raise EvalError(
                f"eval.backend is {name} but vLLM is not installed", hint=INSTALL_HINT.replace("=hf", f"={other}")
            )
        gpus = visible_gpus()
        if gpus == 0:
            raise EvalError(
                f"eval.backend is {name} but no CUDA GPU is visible",
                hint=f"run on a GPU machine, or use eval.backend={other}",
            )
        need = self.devices(self.config)
        if gpus < need:
            raise EvalError(
                f"{name} needs {need} GPUs (tensor_parallel_size x data_parallel_size) but {gpus} are visible",
                hint=f"lower eval.{name}.tensor_parallel_size / data_parallel_size, or give the stage more devices "
                "(resources.devices_per_stage)",
            )
        if self.config.data_parallel_size > 1 and importlib.util.find_spec("ray") is None:
            raise EvalError(
                f"eval.{name}.data_parallel_size > 1 needs Ray (lm-eval runs replicas as Ray actors)",
                hint=f"pip install ray, or set eval.{name}.data_parallel_size=1",
            )

    def model_args(
        self,
        model_dir: Path,
        *,
        batch_size: int | str,
        dtype: str,
        trust_remote_code: bool,
        enable_thinking: bool | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments lm-eval's `VLLM` model is built with."""
        s = self.config
        vllm_dtype = s.dtype if s.dtype != "auto" else _vllm_dtype(dtype)
        args: dict[str, Any] = {
            "pretrained": str(model_dir),
            "dtype": vllm_dtype,
            "tensor_parallel_size": s.tensor_parallel_size,
            "data_parallel_size": s.data_parallel_size,
            "gpu_memory_utilization": s.gpu_memory_utilization,
            "trust_remote_code": trust_remote_code,
            "batch_size": batch_size,
            "seed": 1234,
            **thinking_args(enable_thinking),
        }
        if s.max_model_len is not None:
            args["max_model_len"] = s.max_model_len
        return args

    def load(
        self,
        model_dir: Path,
        *,
        device: str | None,
        batch_size: int | str,
        dtype: str,
        trust_remote_code: bool,
        enable_thinking: bool | None = None,
    ) -> LoadedModel:
        """`device` is ignored: vLLM uses the GPUs in CUDA_VISIBLE_DEVICES (the stage's slot)."""
        self.preflight()
        problems = check_vllm_layout(model_dir)
        if problems:
            raise EvalError(
                f"{model_dir} is not a model directory vLLM loads: " + "; ".join(problems),
                hint="evaluate a graft/train artifact's model/ dir, or fix the listed files",
            )
        from lm_eval.api.registry import get_model

        args = self.model_args(
            model_dir,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            enable_thinking=enable_thinking,
        )
        lm = get_model(self.lm_eval_model)(**args)
        return LoadedModel(
            lm=lm,
            device="cuda",
            has_chat_template=self.has_chat_template(lm),
            max_length=int(getattr(lm, "max_length", 0) or 0),
        )

    def has_chat_template(self, lm: Any) -> bool:
        """Whether the loaded lm-eval model has a chat template (its tokenizer's)."""
        return bool(getattr(lm.tokenizer, "chat_template", None))


def _vllm_dtype(dtype: str) -> str:
    """shadowft's dtype names (torch's, or auto) as vLLM's."""
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16", "float": "float32"}.get(
        dtype, dtype
    )


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


#: Files beside the weights that vLLM or its tokenizer read when present.
_READ_FILES = (
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "preprocessor_config.json",
)


def check_vllm_layout(model_dir: Path, reference: Path | None = None) -> list[str]:
    """What in `model_dir` vLLM would not load as a plain HF model, as messages (empty = fine).

    vLLM reads config.json (architectures, model_type), the tokenizer and its chat template
    (tokenizer_config.json or chat_template.jinja), generation_config.json for its default sampling,
    and the safetensors weights: with an index only the shards it names, without one *every*
    `*.safetensors` in the directory, so a stray adapter or delta file there would be loaded as
    weights. Pickled weights (`*.bin`, `*.pt`) are refused here as everywhere in shadowft.
    With `reference` (the Instruct dir a graft came from), every such file it has must be here and
    config.json must name the same architecture, so the graft loads as Instruct does.
    """
    d = Path(model_dir)
    problems: list[str] = []
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        return ["no config.json"]
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        return [f"config.json is not JSON ({exc})"]
    if not cfg.get("architectures"):
        problems.append("config.json names no architectures (vLLM picks the model class from it)")
    if not cfg.get("model_type"):
        problems.append("config.json has no model_type")
    if not any((d / f).is_file() for f in _TOKENIZER_FILES):
        problems.append(f"no tokenizer ({' / '.join(_TOKENIZER_FILES)})")
    if not (d / "tokenizer_config.json").is_file():
        problems.append("no tokenizer_config.json")
    else:
        tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
        if not tok_cfg.get("chat_template") and not (d / "chat_template.jinja").is_file():
            problems.append("no chat template (tokenizer_config.json chat_template or chat_template.jinja)")
    if reference is not None:
        ref = Path(reference)
        lost = [f for f in _READ_FILES if (ref / f).is_file() and not (d / f).is_file()]
        if lost:
            problems.append(f"files of {ref.name} that vLLM reads are missing: {', '.join(lost)}")
        ref_cfg = json.loads((ref / "config.json").read_text())
        for key in ("architectures", "model_type", "vocab_size", "max_position_embeddings"):
            if ref_cfg.get(key) != cfg.get(key):
                problems.append(f"config.json {key} is {cfg.get(key)!r}, {ref.name} has {ref_cfg.get(key)!r}")
    pickled = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    if pickled:
        problems.append(f"pickled files {', '.join(pickled)} (vLLM may load them; shadowft never writes them)")
    if (d / "adapter_config.json").exists():
        problems.append("adapter_config.json: a PEFT adapter dir, not a merged model")
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    index_path = d / "model.safetensors.index.json"
    if index_path.is_file():
        named = set(json.loads(index_path.read_text()).get("weight_map", {}).values())
        missing = sorted(named - set(shards))
        stray = sorted(set(shards) - named)
        if missing:
            problems.append(f"shards named in the index are missing: {', '.join(missing)}")
        if stray:
            problems.append(f"safetensors files not in the index: {', '.join(stray)}")
    elif not shards:
        problems.append("no safetensors weights")
    elif shards != ["model.safetensors"]:
        extra = [s for s in shards if s != "model.safetensors"]
        problems.append(
            f"safetensors files besides model.safetensors without an index ({', '.join(extra)}): vLLM loads them all"
        )
    return problems
