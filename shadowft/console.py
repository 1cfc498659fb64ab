"""The CLI's rich consoles (results to stdout, progress and errors to stderr), shared by every
command module without importing the command table (which would be an import cycle), and the
quiet mode: known chatter of the dependencies is silenced unless `shadowft --verbose`."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from rich.console import Console
from rich.measure import Measurement


class LineConsole(Console):
    """A rich console that never breaks or cuts its output to fit a width when it is not a terminal.

    Rich wraps at the terminal's width, and at 80 columns (or `COLUMNS`) when there is none: a long
    path in "wrote ..." or an error would then reach a file, a log collector or `grep` split in two,
    and a table's cells would be cut short. Off a terminal, a message made only of text is printed on
    one line (`soft_wrap`), and a table at its natural width (wider than `COLUMNS` when it must be).
    On a terminal, rich wraps text as usual, and a table wider than the terminal is shown in a layout
    that fits (`shadowft.tables.fit_table`: less chrome, transposed scores, or a list of blocks)
    instead of cells cut to a few characters.
    """

    _width_lock = threading.Lock()

    def print(self, *objects: Any, soft_wrap: bool | None = None, **kwargs: Any) -> None:
        if self.is_terminal:
            from rich.table import Table

            from shadowft.tables import fit_table

            objects = tuple(fit_table(o, self) if isinstance(o, Table) else o for o in objects)
            super().print(*objects, soft_wrap=soft_wrap, **kwargs)
            return
        if soft_wrap is None and all(isinstance(o, str) for o in objects):
            super().print(*objects, soft_wrap=True, **kwargs)
            return
        natural = max(
            (
                Measurement.get(self, self.options.update_width(10_000), o).maximum
                for o in objects
                if not isinstance(o, str)
            ),
            default=0,
        )
        if natural <= self.width:
            super().print(*objects, soft_wrap=soft_wrap, **kwargs)
            return
        with self._width_lock:
            before, self._width = self._width, natural
            try:
                super().print(*objects, soft_wrap=soft_wrap, **kwargs)
            finally:
                self._width = before


console = LineConsole()
err_console = LineConsole(stderr=True)

#: Set by `shadowft --verbose`: the dependencies' own logging and bars are left as they are.
VERBOSE = False

# Environment defaults of quiet mode (a value the user already set wins). They must be set before the
# libraries are imported, so the CLI's root callback applies them first thing.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",  # generation-length and tokenizer warnings (114 lines in one demo)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # "Generating test split", "Saving the dataset" bars
    "TOKENIZERS_PARALLELISM": "false",  # the fork warning of the Rust tokenizers
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}
# Prefect loggers that talk about Prefect itself (temporary server start / stop, its docs link);
# the flow and task run loggers (one line per stage) stay at INFO.
PREFECT_CHATTER = ("prefect", "prefect.server", "prefect._internal", "prefect.client", "prefect.events")


def set_verbose(verbose: bool) -> None:
    """Quiet mode (the default) sets `QUIET_ENV`; `--verbose` leaves the environment alone."""
    global VERBOSE
    VERBOSE = verbose
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)


def quiet_prefect() -> None:
    """After Prefect is imported (its logging setup sets the levels): Prefect's own INFO chatter off."""
    if VERBOSE:
        return
    for name in PREFECT_CHATTER:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("prefect.flow_runs", "prefect.task_runs"):  # NOTSET in Prefect's config: would inherit WARNING
        logging.getLogger(name).setLevel(logging.INFO)
