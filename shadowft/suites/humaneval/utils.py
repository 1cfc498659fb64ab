"""pass@1 for `humaneval_offline`: execute prompt + completion + tests in shadowft's sandbox."""

from __future__ import annotations

import os
import re

TIMEOUT_S = float(os.environ.get("SHADOWFT_CODE_TIMEOUT_S", "10"))
MEMORY_MB = int(os.environ.get("SHADOWFT_CODE_MEMORY_MB", "1024"))

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def build_program(doc: dict, completion: str) -> str:
    """The program to run: the completed function followed by the problem's tests.

    A plain completion continues the prompt. A chat-style answer (a fenced code block, or a full
    definition of the entry point) is used as the function itself, after the prompt's imports.
    """
    prompt, entry = doc["prompt"], doc["entry_point"]
    fenced = _FENCE.search(completion)
    code = fenced.group(1) if fenced else completion
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        header = "\n".join(line for line in prompt.splitlines() if line.startswith(("import ", "from ")))
        body = f"{header}\n\n{code}"
    else:
        body = prompt + code
    return f"{body}\n\n{doc['test']}\n\ncheck({entry})\n"


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    from shadowft.sandbox import code_execution_allowed, run_untrusted

    if not code_execution_allowed():
        raise PermissionError(
            "humaneval_offline executes model-written code; opt in with HF_ALLOW_CODE_EVAL=1 "
            "or shadowft's --allow-code-exec"
        )
    outcome = run_untrusted(build_program(doc, results[0]), timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB)
    return {"pass@1": 1.0 if outcome.passed else 0.0}
