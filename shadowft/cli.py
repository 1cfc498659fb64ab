"""The `shadowft` command line: typed functions whose signatures are the CLI and its help."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from shadowft.errors import ShadowFTError

app = typer.Typer(
    name="shadowft",
    help="Shadow-FT: tune the Base model, graft its update onto the Instruct model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

# Command groups live beside the stage they drive; each module registers on `app`.
from shadowft import cli_weights  # noqa: E402,F401  (similarity, check-pair, delta, graft)
from shadowft import cli_eval  # noqa: E402,F401
from shadowft import cli_store  # noqa: E402,F401  (store verify)
from shadowft import cli_zoo  # noqa: E402,F401
# (more command modules are imported here, one line each)


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
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        sys.exit(130)
