"""CLI commands for evaluation: `shadowft eval` and `shadowft suites` (registered in `shadowft.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shadowft.console import console


def eval_(
    model: Annotated[Path, typer.Argument(help="Model directory (Hugging Face format) to evaluate.")],
    suite: Annotated[
        list[str],
        typer.Option(
            "--suite",
            "-s",
            help="Suite(s), comma separated or repeated: a named suite (`shadowft suites`), an lm-eval "
            "task/group name, or a folder of lm-eval task YAMLs.",
        ),
    ] = ["toy-math", "toy-coding", "toy-reasoning"],  # noqa: B006
    limit: Annotated[int | None, typer.Option(help="At most this many examples per task.", min=1)] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Results JSON; per-sample logs are written beside it.")
    ] = Path("eval-results/results.json"),
    batch_size: Annotated[str, typer.Option(help="Batch size: an integer or `auto`.")] = "1",
    chat_template: Annotated[
        bool | None,
        typer.Option(
            "--chat-template/--no-chat-template",
            help="Wrap prompts in the model's chat template (default: on when the tokenizer has one).",
            show_default=False,
        ),
    ] = None,
    allow_code_exec: Annotated[
        bool,
        typer.Option(
            "--allow-code-exec",
            help="Allow code suites to execute model-written code (in shadowft's sandbox). "
            "Same as HF_ALLOW_CODE_EVAL=1.",
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, cuda:1 ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help="Weights dtype: auto (as stored), float32, bfloat16, float16.")] = "auto",
    max_gen_toks: Annotated[
        int | None, typer.Option(help="Override the tasks' maximum generated tokens.", min=1)
    ] = None,
    system_instruction: Annotated[str | None, typer.Option(help="System prompt for chat-formatted prompts.")] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Run the model repo's own Python code (off by default).")
    ] = False,
    backend: Annotated[
        str,
        typer.Option(
            help="How the model runs under lm-eval (eval.backend): hf, vllm, hf-multimodal (vision-language "
            "models), vllm-vlm; with its default settings."
        ),
    ] = "hf",
) -> None:
    """Evaluate a model on suites with lm-eval; print a table and write the results JSON."""
    from shadowft.evaluate import EvalError, evaluate_model

    bs: int | str = batch_size
    if batch_size != "auto" and not batch_size.startswith("auto:"):
        try:
            bs = int(batch_size)
        except ValueError:
            raise EvalError(f"--batch-size must be an integer or 'auto', got {batch_size!r}") from None
    result = evaluate_model(
        model,
        suite,
        output.parent,
        limit=limit,
        batch_size=bs,
        apply_chat_template=chat_template,
        allow_code_execution=allow_code_exec,
        device=device,
        system_instruction=system_instruction,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        max_gen_toks=max_gen_toks,
        results_name=output.name,
        backend=backend,
    )
    from shadowft.report import suite_stderr
    from shadowft.tables import pct

    # the same unit as `shadowft run`'s table and report: % with one decimal, ± the standard error
    table = Table(title=f"{model}: scores in % (chat template {'on' if result.chat_template else 'off'})")
    for col in ("suite", "score", "± stderr", "n", "chance", "metric"):
        table.add_column(col, justify="left" if col in ("suite", "metric") else "right")
    for name, s in result.suites.items():
        se = suite_stderr(s.model_dump(mode="json"))
        table.add_row(name, pct(s.score), pct(se), str(s.n), pct(s.chance), s.metric)
    console.print(table)
    console.print(f"results: {output}  ({result.timings['total_s']:.1f} s)")


def suites() -> None:
    """List the named evaluation suites."""
    from rich.markup import escape

    from shadowft.evaluate import list_suites
    from shadowft.tables import pct

    table = Table(title="suites (also: any lm-eval task/group name, or a folder of task YAMLs)")
    listed = list_suites()
    table.add_column("suite", no_wrap=True, min_width=max(len(s.name) for s in listed))
    for col in ("tasks", "missing (not in lm-eval)", "chance %", "offline", "runs code", "description"):
        table.add_column(col)
    for s in listed:
        table.add_row(
            s.name,
            ", ".join(t.name for t in s.tasks),
            ", ".join(s.missing) or "-",
            pct(s.chance),
            "yes" if s.offline else "no",
            "yes" if s.code_execution else "no",
            escape(s.description),  # "[bracketed]" is text, not markup
        )
    console.print(table)
