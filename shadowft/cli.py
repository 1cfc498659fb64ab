"""The `shadowft` command line: one explicit table of every command.

`shadowft` (the console script) and `python -m shadowft` both run `main`. Command modules import
only typer and rich at import time and load their heavy modules (torch, lm-eval, Prefect, the flows)
inside the command, so `shadowft --help` stays fast and `shadowft/` never imports Prefect on import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from shadowft import __version__, chat, cli_eval, cli_flows, cli_plan, cli_store, cli_weights, cli_zoo
from shadowft.console import console, err_console, set_verbose
from shadowft.errors import ShadowFTError

#: name -> command function; the function's signature and docstring are its CLI and help.
COMMANDS: dict[str, Callable[..., Any]] = {
    "similarity": cli_weights.similarity,
    "check-pair": cli_weights.check_pair,
    "delta": cli_weights.delta,
    "graft": cli_weights.graft,
    "convert": cli_weights.convert,
    "eval": cli_eval.eval_,
    "suites": cli_eval.suites,
    "chat": chat.chat,
    "run": cli_flows.run,
    "demo": cli_flows.demo,
    "compare": cli_flows.compare,
    "serve": cli_flows.serve,
    "plan": cli_plan.plan,
}
#: name -> a group of subcommands
GROUPS: dict[str, typer.Typer] = {
    "zoo": cli_zoo.zoo_app,
    "store": cli_store.store_app,
}

app = typer.Typer(
    name="shadowft",
    help="Shadow-FT: tune the Base model, graft its update onto the Instruct model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"shadowft {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show the dependencies' own warnings, bars and Prefect's server messages."
        ),
    ] = False,
) -> None:
    """Shadow-FT: tune the Base model, graft its update onto the Instruct model."""
    set_verbose(verbose)


for _name, _fn in COMMANDS.items():
    app.command(_name)(_fn)
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)

__all__ = ["COMMANDS", "GROUPS", "app", "console", "err_console", "main"]


def main() -> None:
    """Console entry point: user errors print a message and a hint, never a traceback."""
    try:
        app()
    except ShadowFTError as exc:
        from rich.markup import escape

        # soft_wrap: long paths stay on one line (copyable); escape: "[from override ...]" is text
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True, highlight=False)
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}", soft_wrap=True, highlight=False)
        _exit(getattr(exc, "exit_code", 2))  # 2: bad input; 3: a run refused by the promotion gate
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        sys.exit(130)
    except SystemExit as exc:  # how typer ends every command
        _exit(exc.code)


def _is_program() -> bool:
    """Whether `main` runs as the process's program (the console script, `python -m shadowft`),
    not called by code that goes on after it (a test, a notebook)."""
    prog = sys.modules.get("__main__")
    spec = getattr(prog, "__spec__", None)
    if spec is not None:
        return spec.name == "shadowft.__main__"
    file = getattr(prog, "__file__", None) or ""
    return os.path.basename(file) == "shadowft" and getattr(prog, "main", None) is main


def _exit(code: object) -> NoReturn:
    """`sys.exit(code)`; after a weight-surgery command (`cli_weights.QUICK_EXIT`) run as the program,
    the process ends at once, without Python's teardown of the thousands of objects torch created
    (0.7-1.7 s on a 2-core machine): the command's output is published and its files are closed."""
    if cli_weights.QUICK_EXIT and _is_program():
        import logging

        if isinstance(code, str):
            print(code, file=sys.stderr)
        status = 0 if code is None else code if isinstance(code, int) else 1
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(code)  # type: ignore[arg-type]
