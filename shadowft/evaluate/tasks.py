"""Building lm-eval tasks for resolved suites (before any model loads) and their generation limits."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from shadowft.errors import EvalError
from shadowft.evaluate.suites import Suite, TaskSpec


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


def build_tasks(suites: list[Suite], tm: Any) -> dict[str, list[Any]]:
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


def leaf_tasks(built: dict[str, list[Any]]) -> list[Any]:
    return [
        task
        for objs in built.values()
        for obj in objs
        for task in (obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj])
    ]


def set_generation_limits(built: dict[str, list[Any]], max_gen_toks: int | None, model_max_len: int) -> None:
    """Apply a `max_gen_toks` override; keep generation within the model's context (half of it at most)."""
    for task in leaf_tasks(built):
        if task.get_config("output_type") != "generate_until":
            continue
        gen = dict(task.get_config("generation_kwargs") or {})
        n = max_gen_toks if max_gen_toks is not None else gen.get("max_gen_toks", 256)
        if model_max_len and n >= model_max_len:
            n = model_max_len // 2
        if n != gen.get("max_gen_toks"):
            task.set_config(key="generation_kwargs", value={"max_gen_toks": int(n)}, update=True)
