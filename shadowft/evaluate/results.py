"""The results schema every evaluation backend writes (`results.json`), and how lm-eval's raw
output becomes it: per task the primary metric, per suite the mean of its tasks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from shadowft.evaluate.suites import Suite, SuiteKind
from shadowft.files import write_text_atomic

SCHEMA_VERSION = 1


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
    chat_template: bool | None = Field(
        default=None,
        description="Prompts were wrapped in the model's chat template (False for own-data, whose prompts "
        "were rendered with Instruct's template when the data was prepared).",
    )
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
    backend: str = Field(default="hf", description="The evaluation backend that ran the model.")
    backend_settings: dict[str, Any] = Field(
        default_factory=dict, description="The backend's own settings (vllm: parallelism, memory, context, dtype)."
    )
    suites: dict[str, SuiteResult]
    chat_template: bool = Field(description="Prompts were wrapped in the model's chat template.")
    fewshot_as_multiturn: bool = Field(
        default=False, description="Few-shot examples were given as earlier chat turns (chat template only)."
    )
    enable_thinking: bool | None = Field(
        default=None, description="Qwen3's thinking switch passed to the chat template (None = not set)."
    )
    request_cache: bool = Field(default=False, description="Answers were cached per request (resumable run).")
    threads: int | None = Field(default=None, description="torch's CPU threads during the run.")
    system_instruction: str | None = None
    generation: dict[str, dict[str, Any]] = Field(description="Generation settings per generative task.")
    limit: int | None
    batch_size: int | str
    code_execution: bool
    lm_eval_version: str
    shadowft_version: str
    timings: dict[str, float]
    samples: dict[str, str] = Field(description="Per-sample log file of each task, relative to the results file.")
    results_file: str | None = Field(
        default=None, description="This file's name; the per-sample logs (`samples`) lie beside it."
    )


def load_result(path: Path) -> EvalResult:
    """Read a `results.json` written by `evaluate_model`."""
    return EvalResult.model_validate_json(Path(path).read_text())


def filtered_score(suite: dict[str, Any], filter_name: str, metric: str | None = None) -> float | None:
    """A suite's score under another lm-eval filter than its primary one (e.g. `strict` beside the
    primary `flexible`): the mean over its tasks of `metrics["<metric>,<filter_name>"]`, `metric`
    defaulting to each task's own. None when a task lacks that key or its value, so a partial score
    is never passed off as the suite's. `suite` is a suite of `results.json` as data."""
    tasks = suite.get("tasks") or {}
    scores = []
    for t in tasks.values():
        name = metric or str(t.get("metric", "")).split(",")[0]
        scores.append(_num((t.get("metrics") or {}).get(f"{name},{filter_name}")))
    if not scores or any(s is None for s in scores):
        return None
    return sum(s for s in scores if s is not None) / len(scores)


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


def collect(
    suite: Suite, raw: dict[str, Any], system_instruction: str | None, chat_template: bool | None = None
) -> SuiteResult:
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
        chat_template=chat_template,
        tasks=tasks,
    )


def write_samples(out_dir: Path, samples: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    from lm_eval.utils import handle_non_serializable

    written = {}
    for task, rows in sorted(samples.items()):
        name = f"samples_{task.replace('/', '_')}.jsonl"
        text = "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows)
        write_text_atomic(out_dir / name, text)
        written[task] = name
    return written
