"""The CLI's rich consoles (results to stdout, progress and errors to stderr), shared by every
command module without importing the command table (which would be an import cycle)."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
