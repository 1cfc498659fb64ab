"""The evaluation stage: run suites of lm-eval tasks on a model directory, one results schema.

Everything a run needs is validated (suite names, task names, code-execution opt-in, data) before
the model is loaded by the chosen backend (`shadowft.evaluate.backends`). Results are written as one
JSON (`results.json`, schema in `shadowft.evaluate.results`) with per-sample logs
(`samples_<task>.jsonl`) beside it, both by atomic rename.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shadowft.concurrency import environment, module_attribute
from shadowft.errors import CheckpointError, EvalError, ShadowFTError
from shadowft.evaluate.backends import DEFAULT_BACKEND, EvalBackend, get_backend
from shadowft.evaluate.progress import progress_labels
from shadowft.evaluate.results import EvalResult, ModelInfo, collect, write_samples
from shadowft.evaluate.suites import require_code_opt_in, resolve_suites
from shadowft.evaluate.tasks import build_tasks, leaf_tasks, set_generation_limits
from shadowft.files import write_text_atomic
from shadowft.plan import model_shape
from shadowft.threads import resolve_threads, thread_limit

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (and the hub libraries' cached offline flags) for the block; blocks of
    evaluations running side by side may overlap (`shadowft.concurrency.environment`)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(environment(values))
        if values.get("HF_HUB_OFFLINE") == "1":
            for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
                with contextlib.suppress(ImportError, AttributeError):
                    stack.enter_context(module_attribute(importlib.import_module(mod), attr, True))
        yield


def _check_model_dir(model_dir: Path) -> Path:
    model_dir = Path(model_dir).expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(
            f"{model_dir} is not a model directory (no config.json)",
            hint="give a Hugging Face model directory (config, tokenizer, safetensors)",
        )
    return model_dir


def _params(model_dir: Path) -> int:
    """The model's parameter count for the threads default: the planner's figure from config.json, else
    the weights' headers (a config the planner cannot size still evaluates); 0 when neither says."""
    try:
        return model_shape(model_dir).params
    except ShadowFTError:
        from shadowft.checkpoint import Checkpoint

        try:
            return sum(t.numel for t in Checkpoint(model_dir).tensors.values())
        except ShadowFTError:
            return 0


def _check_modality(built: dict[str, list[Any]], engine: EvalBackend) -> None:
    """Suites whose requests carry images need a backend that runs them (lm-eval would stop with a
    ValueError after the model load)."""
    if engine.multimodal:
        return
    with_images = sorted(suite for suite, objs in built.items() if _asks_images(suite, objs))
    if with_images:
        raise EvalError(
            f"suite(s) {', '.join(with_images)} ask about images, which eval.backend {engine.name} cannot give "
            "the model",
            hint="evaluate a vision-language model with eval.backend: hf-multimodal (or vllm-vlm on GPUs)",
        )


def _asks_images(suite: str, objs: list[Any]) -> bool:
    """Do the suite's requests carry images (lm-eval's multimodal tasks)?"""
    return any(getattr(task, "MULTIMODAL", False) for task in leaf_tasks({suite: objs}))


def _no_env_info(storage: dict[str, Any]) -> None:
    """Stands in for lm-eval's `add_env_info` (its report is dropped by `collect`)."""


def _no_git_hash() -> None:
    """Stands in for lm-eval's `get_git_commit_hash`: the hash of whatever repository the user's working
    dir is in says nothing about the evaluation, and outside one its `git` printed `fatal: not a git
    repository` to the user's terminal once per model."""


def _fingerprint(model_dir: Path) -> str:
    from shadowft.fingerprint import fingerprint_model_dir

    return fingerprint_model_dir(model_dir)


def evaluate_model(
    model_dir: Path,
    suites: str | Sequence[str],
    out_dir: Path,
    limit: int | None = None,
    batch_size: int | str = 1,
    apply_chat_template: bool | None = None,
    allow_code_execution: bool = False,
    device: str | None = None,
    system_instruction: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    max_gen_toks: int | None = None,
    results_name: str = "results.json",
    backend: str = DEFAULT_BACKEND,
    backend_settings: dict[str, Any] | None = None,
    fewshot_as_multiturn: bool = True,
    enable_thinking: bool | None = None,
    cache_dir: Path | None = None,
    threads: int | None = None,
    label: str | None = None,
) -> EvalResult:
    """Run `suites` on the model in `model_dir` with lm-eval; write `out_dir/results.json`.

    - `limit`: at most this many examples per task (None = all).
    - `batch_size`: an int, or `"auto"` to let lm-eval find the largest that fits.
    - `apply_chat_template`: None = on when the tokenizer has a chat template (recorded either way).
    - `allow_code_execution`: run model-written code (sandboxed) for code suites; also granted by
      `HF_ALLOW_CODE_EVAL=1`. Without it a code suite is refused before the model loads.
    - `device`: None = cuda when available, else cpu. `dtype`: as stored (`auto`) or a torch dtype name.
    - `max_gen_toks`: override the tasks' generation length (always capped at half the model's context).
    - `backend`: how the model runs (`shadowft.evaluate.backends`; default lm-eval's `hf`), with its
      `backend_settings` (vllm's engine arguments); both are recorded in the results.
    - `fewshot_as_multiturn`: with the chat template, few-shot examples as earlier turns.
    - `enable_thinking`: Qwen3's thinking switch for the chat template (None = the template's default).
    - `cache_dir`: keep every answered request in an SQLite cache here (`shadowft.evaluate.cache`:
      lm-eval's keys, JSON answers, never pickles), so that a killed evaluation re-run with the same
      `cache_dir` answers finished requests from it.
    - `threads`: torch's CPU threads for the run (None = `shadowft.threads.resolve_threads`' default
      for the model's size: 1 thread for small models, which collapse beside a busy neighbour).
    - `label`: names the model on lm-eval's progress bars (default: the model dir's name).
    """
    t0 = time.monotonic()
    resolved = resolve_suites(suites)
    code_ok = require_code_opt_in(resolved, allow_code_execution)
    code_suites = [s.name for s in resolved if s.code_execution]
    engine = get_backend(backend, **(backend_settings or {}))
    engine.preflight()  # a missing package or GPU fails here, before tasks or the model load
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be at least 1, got {limit}")
    model_dir = _check_model_dir(model_dir)
    engine.check_model(model_dir)  # e.g. a vision-language model on a text backend: said before any loading
    threads = resolve_threads(threads, _params(model_dir))
    all_offline = all(s.offline for s in resolved)
    env: dict[str, str] = {k: "1" for k in _OFFLINE_ENV} if all_offline else {}
    if code_suites:
        env["HF_ALLOW_CODE_EVAL"] = "1"

    import lm_eval
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    import shadowft
    from shadowft.evaluate.cache import CachedLM, cache_file

    timings: dict[str, float] = {}
    # lm-eval's environment report (torch's collect_env: `pip list` and other subprocesses, 1-2 s per lm-eval
    # run) is not part of results.json, which records the versions that matter
    with (
        _env(env),
        thread_limit(threads),
        module_attribute(evaluator, "add_env_info", _no_env_info),
        module_attribute(evaluator, "get_git_commit_hash", _no_git_hash),
    ):
        include = [str(s.include_path) for s in resolved if s.kind == "folder"]
        tm = TaskManager(
            include_path=include or None,
            include_defaults=any(s.kind == "lm_eval" for s in resolved),
        )
        built = build_tasks(resolved, tm)
        _check_modality(built, engine)
        timings["load_tasks_s"] = round(time.monotonic() - t0, 3)

        t1 = time.monotonic()
        fingerprint = _fingerprint(model_dir)
        loaded = engine.load(
            model_dir,
            device=device,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            enable_thinking=enable_thinking,
        )
        lm, device, has_template = loaded.lm, loaded.device, loaded.has_chat_template
        if apply_chat_template is None:
            apply_chat_template = has_template
        elif apply_chat_template and not has_template:
            raise EvalError(
                f"the tokenizer in {model_dir} has no chat template",
                hint="evaluate without it (--no-chat-template) or add a chat template to the tokenizer",
            )
        timings["load_model_s"] = round(time.monotonic() - t1, 3)

        set_generation_limits(built, max_gen_toks, loaded.max_length)

        # One lm-eval run per system prompt: a suite's own default applies only with the chat template
        # and only when the caller gave none. Suites whose prompts are rendered already (own-data) run
        # apart, without the template and without a system prompt.
        templated = {s.name: bool(apply_chat_template) and not s.rendered_prompts for s in resolved}
        prompts: dict[str, str | None] = {
            s.name: None
            if s.rendered_prompts
            else system_instruction
            if system_instruction is not None or not apply_chat_template
            else s.system_instruction
            for s in resolved
        }
        t2 = time.monotonic()
        raw: dict[str, Any] = {"results": {}, "n-samples": {}, "samples": {}, "group_subtasks": {}}
        # Image and text suites run apart too: lm-eval hands all of a run's generation requests to the
        # model at once, and hf-multimodal picks its image or its text path by the first request only
        images = {s.name: _asks_images(s.name, built[s.name]) for s in resolved}
        run_of = {s.name: (prompts[s.name], templated[s.name], images[s.name]) for s in resolved}
        runs = dict.fromkeys(run_of.values())
        for i, run_key in enumerate(runs):
            prompt, chat, _ = run_key
            names = [s.name for s in resolved if run_of[s.name] == run_key]
            task_objs = [obj for name in names for obj in built[name]]
            # Our own request cache (JSON rows), not lm-eval's `use_cache` (pickles: code in the file runs);
            # its file per run keeps the numbering of runs before rendered suites existed
            model = CachedLM(lm, cache_file(cache_dir, i, lm)) if cache_dir is not None else lm
            if hasattr(lm, "chat_applied"):
                # lm-eval's multimodal models note that a chat template rendered the images (then they do not
                # put their image marker into the prompt) and never clear the note: a run without the
                # template (rendered own-data prompts) after one with it must start clear
                lm.chat_applied = False
            try:
                with progress_labels(label or model_dir.name, names, built):
                    part = evaluator.simple_evaluate(
                        model=model,
                        tasks=task_objs,
                        task_manager=tm,
                        limit=limit,
                        batch_size=batch_size,
                        apply_chat_template=chat,
                        fewshot_as_multiturn=chat and fewshot_as_multiturn,
                        system_instruction=prompt,
                        confirm_run_unsafe_code=bool(code_suites) and code_ok,
                        log_samples=True,
                        bootstrap_iters=1000,
                    )
            finally:
                if isinstance(model, CachedLM):
                    model.close()
            assert part is not None
            for key, acc in raw.items():
                acc.update(part.get(key) or {})
        timings["evaluate_s"] = round(time.monotonic() - t2, 3)

    generation = {
        task.task_name: dict(task.get_config("generation_kwargs") or {})
        for task in leaf_tasks(built)
        if task.get_config("output_type") == "generate_until"
    }

    out_dir = Path(out_dir)
    samples = write_samples(out_dir, raw.get("samples") or {})
    timings["total_s"] = round(time.monotonic() - t0, 3)
    result = EvalResult(
        model=ModelInfo(path=str(model_dir), fingerprint=fingerprint, dtype=str(dtype), device=device),
        backend=engine.name,
        backend_settings=engine.settings(),
        fewshot_as_multiturn=bool(apply_chat_template) and fewshot_as_multiturn,
        enable_thinking=enable_thinking,
        request_cache=cache_dir is not None,
        threads=threads,
        suites={s.name: collect(s, raw, prompts[s.name], templated[s.name]) for s in resolved},
        chat_template=bool(apply_chat_template),
        system_instruction=system_instruction,
        generation=generation,
        limit=limit,
        batch_size=batch_size,
        code_execution=bool(code_suites) and code_ok,
        lm_eval_version=getattr(lm_eval, "__version__", "unknown"),
        shadowft_version=shadowft.__version__,
        timings=timings,
        samples=samples,
        results_file=results_name,  # a name, not a path: the directory may be renamed (stores publish so)
    )
    write_text_atomic(out_dir / results_name, result.model_dump_json(indent=2))
    return result
