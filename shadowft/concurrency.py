"""Process-wide state that stages running side by side in threads share, touched in one place.

The flow runs trainings, grafts, validation losses and evaluations at once in Prefect's thread pool.
Three kinds of state are global to the process and not safe for that on their own:

- **First use of the lazily loading libraries.** transformers 5 loads its parts on first attribute
  access, and peft, trl, lm-eval and datasets import it. Two threads importing them for the first
  time at once can each be handed the other's module half initialised (Python's import-cycle
  detection returns a partial module): "cannot import name 'AutoModel' from 'transformers'",
  "module 'transformers' has no attribute 'set_seed'", at random. `import_libraries` imports what a
  stage will use under one lock before its work starts (`shadowft.stages.run`).
- **Environment variables** a stage sets for its block and restores afterwards (evaluation's offline
  flags). Two blocks overlapping in time would restore each other's values in the wrong order and
  leave the process with a setting neither asked for. `ProcessSetting` keeps the active requests:
  the newest one holds, and the value from before the first is restored after the last.

Looked at and safe as they are (tests/test_concurrency.py checks each): torch's intra-op thread count
is the calling thread's own (OpenMP's per-thread setting), so `shadowft.threads.thread_limit` needs
no lock; no stage changes the current working directory; each stage loads its own tokenizer object.
"""

from __future__ import annotations

import importlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

#: Every name shadowft reads off `transformers` (a test keeps this list complete). Resolving a name
#: imports the transformers submodule that defines it, so doing it here, under the lock, means no
#: stage thread imports a transformers submodule for the first time while another one does.
TRANSFORMERS_NAMES = (
    "AutoConfig",
    "AutoModelForCausalLM",
    "AutoModelForImageTextToText",
    "AutoProcessor",
    "AutoTokenizer",
    "DataCollatorWithFlattening",
    "Gemma3Config",
    "Gemma3Processor",
    "GenerationConfig",
    "LlamaConfig",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaProcessor",
    "PreTrainedTokenizerFast",
    "PrinterCallback",
    "Qwen3Config",
    "Trainer",
    "TrainerCallback",
    "TrainerState",
    "TrainingArguments",
    "set_seed",
)

#: The libraries (modules) each kind of stage uses in its own thread. Stages that only read and write
#: safetensors (delta, distance, alpha selection, report) need none; the pair check and the graft read a
#: vision-language model's structure with transformers (`shadowft.modality`).
#: a vision-language model's structure and its file -> module names (`shadowft.modality`)
_STRUCTURE = ("transformers", "transformers.conversion_mapping", "transformers.core_model_loading")
_TRAIN = ("transformers", "transformers.integrations", "peft", "datasets", "accelerate", "trl")
_EVAL = (
    "transformers",
    "peft",
    "datasets",
    "lm_eval",
    "lm_eval.evaluator",
    "lm_eval.tasks",
    "lm_eval.models.huggingface",
)
STAGE_LIBRARIES: dict[str, tuple[str, ...]] = {
    "pair": _STRUCTURE,
    "graft": _STRUCTURE,
    "data": ("transformers", "datasets"),
    "train": _TRAIN,
    "val_loss": ("transformers", "datasets"),
    "eval": _EVAL,
}

_import_lock = threading.Lock()
_imported: set[str] = set()


def import_libraries(*modules: str) -> None:
    """Import `modules` (and, for transformers, resolve `TRANSFORMERS_NAMES`) one thread at a time.

    Cheap once done: a module already imported by this function is skipped without the lock.
    """
    if all(m in _imported for m in modules):
        return
    with _import_lock:
        for name in modules:
            if name in _imported:
                continue
            module = importlib.import_module(name)
            if name == "transformers":
                for attr in TRANSFORMERS_NAMES:
                    getattr(module, attr)
            _imported.add(name)


def import_for_stage(stage: str) -> None:
    """The libraries a stage of this kind uses, imported before its work starts."""
    import_libraries(*STAGE_LIBRARIES.get(stage, ()))


class ProcessSetting:
    """A process-wide value set for a block by threads that may overlap in time.

    The newest active request holds; when a request ends, the newest one still active is applied
    again, and after the last one the value from before the first is restored.
    """

    def __init__(self, get: Callable[[], Any], apply: Callable[[Any], None]) -> None:
        self._get, self._apply = get, apply
        self._lock = threading.Lock()
        self._active: dict[int, Any] = {}
        self._before: Any = None
        self._tokens = itertools.count()

    @contextmanager
    def set(self, value: Any) -> Iterator[None]:
        with self._lock:
            if not self._active:
                self._before = self._get()
            token = next(self._tokens)
            self._active[token] = value
            self._apply(value)
        try:
            yield
        finally:
            with self._lock:
                del self._active[token]
                self._apply(self._active[max(self._active)] if self._active else self._before)


_settings: dict[str, ProcessSetting] = {}
_settings_lock = threading.Lock()


def _shared_setting(name: str, get: Callable[[], Any], apply: Callable[[Any], None]) -> ProcessSetting:
    """One `ProcessSetting` per process-wide value, made on first use."""
    with _settings_lock:
        if name not in _settings:
            _settings[name] = ProcessSetting(get, apply)
        return _settings[name]


def _env_setting(key: str) -> ProcessSetting:
    def apply(value: str | None) -> None:
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    return _shared_setting(f"env:{key}", lambda: os.environ.get(key), apply)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the block; safe when blocks of several threads overlap."""
    with ExitStack() as stack:
        for key, value in values.items():
            stack.enter_context(_env_setting(key).set(value))
        yield


@contextmanager
def module_attribute(module: Any, attr: str, value: Any) -> Iterator[None]:
    """A module's global (a library's cached flag) set for the block, as `environment` does."""
    setting = _shared_setting(
        f"attr:{module.__name__}.{attr}", lambda: getattr(module, attr), lambda v: setattr(module, attr, v)
    )
    with setting.set(value):
        yield
