"""Evaluation (stage 6): lm-eval suites on one model directory, one results schema.

- `suites`: the suite registry and name resolution (no model needed);
- `tasks`: building lm-eval tasks for the resolved suites;
- `backends/`: how the model runs (lm-eval's `hf`, `vllm`, ...), selected by `eval.backend`;
- `results`: the `results.json` schema every backend writes;
- `run`: `evaluate_model`, the stage itself.

The names below are imported on first use (module `__getattr__`): `shadowft.config` imports the
backend registry, which lives in this package, so importing the package must not import `run`
(which imports the config through `shadowft.plan`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadowft.errors import EvalError
    from shadowft.evaluate.results import (
        SCHEMA_VERSION,
        EvalResult,
        ModelInfo,
        SuiteResult,
        TaskResult,
        load_result,
    )
    from shadowft.evaluate.run import evaluate_model
    from shadowft.evaluate.suites import (
        SUITES_DIR,
        TOY_SYSTEM_PROMPT,
        Suite,
        TaskSpec,
        list_suites,
        require_code_opt_in,
        resolve_suites,
    )

_LAZY = {
    "EvalError": "shadowft.errors",
    **dict.fromkeys(
        ("SCHEMA_VERSION", "EvalResult", "ModelInfo", "SuiteResult", "TaskResult", "load_result"),
        "shadowft.evaluate.results",
    ),
    "evaluate_model": "shadowft.evaluate.run",
    **dict.fromkeys(
        (
            "SUITES_DIR",
            "TOY_SYSTEM_PROMPT",
            "Suite",
            "TaskSpec",
            "list_suites",
            "require_code_opt_in",
            "resolve_suites",
        ),
        "shadowft.evaluate.suites",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCHEMA_VERSION",
    "SUITES_DIR",
    "TOY_SYSTEM_PROMPT",
    "EvalError",
    "EvalResult",
    "ModelInfo",
    "Suite",
    "SuiteResult",
    "TaskResult",
    "TaskSpec",
    "evaluate_model",
    "list_suites",
    "load_result",
    "require_code_opt_in",
    "resolve_suites",
]
