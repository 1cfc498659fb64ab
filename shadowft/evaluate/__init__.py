"""Evaluation (stage 6): lm-eval suites on one model directory, one results schema.

- `suites`: the suite registry and name resolution (no model needed);
- `tasks`: building lm-eval tasks for the resolved suites;
- `backends/`: how the model runs (today lm-eval's `hf`), selected by `eval.backend`;
- `results`: the `results.json` schema every backend writes;
- `run`: `evaluate_model`, the stage itself.
"""

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
