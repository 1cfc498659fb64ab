"""Labels on lm-eval's progress bars: which model and which suite each bar counts.

lm-eval's bars say "Running generate_until requests" or nothing at all (the bar that builds each
task's prompts shows only ``0/100``); a run evaluates several models, one after another, so a bar
must say whose it is. lm-eval's modules get, once, a `tqdm` subclass that prefixes each new bar with
the label of the evaluation running in the calling thread (a context variable: evaluations in other
threads keep their own), e.g. ``eval shadow-ft toy-math: prompts`` and ``eval shadow-ft toy-math +3:
generate``. Bars made outside `progress_labels` are left as lm-eval makes them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

#: lm-eval modules whose module-level `tqdm` makes the bars of an evaluation (vllm's when loaded).
MODULES = (
    "lm_eval.api.task",
    "lm_eval.api.model",
    "lm_eval.models.huggingface",
    "lm_eval.models.vllm_causallms",
    "lm_eval.models.hf_vlms",
    "lm_eval.models.vllm_vlms",
)
#: lm-eval's descriptions -> the short word shown after the label (None: the prompt-building bar).
WHAT = {
    None: "prompts",
    "Running generate_until requests": "generate",
    "Running loglikelihood requests": "score",
    "Running generate_until requests with text+image input": "generate",
    "Running loglikelihood requests with text+image input": "score",
    "Checking cached requests": "cache",
}


class _Label:
    def __init__(self, model: str, suites: Sequence[str], task_suite: dict[str, str]) -> None:
        self.model, self.suites, self.task_suite = model, list(suites), task_suite

    def text(self, desc: str | None, caller: Any) -> str:
        what = WHAT.get(desc, desc or "prompts")
        task = getattr(getattr(caller, "config", None), "task", None)
        if isinstance(task, str) and task in self.task_suite:
            where = self.task_suite[task]
        elif len(self.suites) <= 1:
            where = "".join(self.suites)
        else:
            where = f"{self.suites[0]} +{len(self.suites) - 1}"
        return " ".join(p for p in ("eval", self.model, where) if p) + f": {what}"


_current: ContextVar[_Label | None] = ContextVar("shadowft_eval_label", default=None)
_patch_lock = threading.Lock()


def _labelled(base: type) -> type:
    class LabelledBar(base):  # type: ignore[misc, valid-type]
        """lm-eval's bar with the running evaluation's label as its description."""

        _shadowft_labelled = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            label = _current.get()
            if label is not None:
                caller = sys._getframe(1).f_locals.get("self")
                kwargs["desc"] = label.text(kwargs.get("desc"), caller)
            super().__init__(*args, **kwargs)

    LabelledBar.__name__ = LabelledBar.__qualname__ = base.__name__
    return LabelledBar


def install() -> None:
    """Give lm-eval's loaded modules the labelling bar (once per module; modules not yet imported
    are skipped and patched by a later call)."""
    with _patch_lock:
        for name in MODULES:
            module = sys.modules.get(name)
            bar = getattr(module, "tqdm", None) if module is not None else None
            if isinstance(bar, type) and not getattr(bar, "_shadowft_labelled", False):
                module.tqdm = _labelled(bar)  # type: ignore[union-attr]


@contextlib.contextmanager
def progress_labels(model: str, suites: Sequence[str], built: dict[str, list[Any]] | None = None) -> Iterator[None]:
    """Label the bars that lm-eval makes in this block with `model` and the suite they count
    (`built`: suite -> its lm-eval task objects, to name the suite of a task's own bar)."""
    from shadowft.evaluate.tasks import leaf_tasks

    task_suite = {}
    for suite in suites:
        for task in leaf_tasks({suite: (built or {}).get(suite, [])}):
            name = getattr(task, "task_name", None) or getattr(getattr(task, "config", None), "task", None)
            if isinstance(name, str):
                task_suite[name] = suite
    install()
    token = _current.set(_Label(model, suites, task_suite))
    try:
        yield
    finally:
        _current.reset(token)
