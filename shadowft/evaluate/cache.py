"""The evaluation request cache: answered requests kept in SQLite as JSON, never as pickles.

lm-eval's own cache (`use_cache`, `CachingLM`) is a `sqlitedict` of pickles: whoever can write the
cache file (a work dir on shared cluster storage) runs code in the next evaluation that resumes from
it. This cache keeps lm-eval's keys (`hash_args` of the request type and arguments) and its
behaviour (answers are written as the model produces them, through the model's cache hook, so a
killed run keeps them; sampled generations are never answered from the cache), but stores each
answer as JSON text, checked against the shape its request type returns (a `(float, bool)` pair, a
float, a string). A row that is not such JSON (a planted pickle, a truncated write) is a miss: the
request goes to the model and its answer replaces the row. Nothing read from the file is executed.

Requests with images (lm-eval's multimodal tasks: a third argument `{"visual": [...]}`) are keyed
with their images (lm-eval's `hash_args` hashes an image's PNG bytes), but lm-eval's multimodal
models report answers to the cache hook under the text and generation settings alone (`hf_vlms`,
`vllm_vlms`: "cache key for multimodal input should be what?"), a key that would give one picture's
answer to another with the same question. So those hook reports are dropped, and the requests go to
the model in chunks of its batch size (sorted longest first, as lm-eval batches them), each chunk's
answers stored under the full key as it returns: a killed run keeps all but the chunk in flight.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: The request types lm-eval sends to a model; every other attribute passes through unchanged.
REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")
TABLE = "answers"
#: The keys of lm-eval's multimodal request argument (`Instance.args[2]`).
MEDIA_KEYS = ("visual", "audio")
#: Requests per model call for requests with media when the model's batch size is not a number.
MEDIA_CHUNK = 32


def _decode(attr: str, text: Any) -> Any | None:
    """The answer stored as `text` for a request of type `attr`, or None when it is not one."""
    if not isinstance(text, str):
        return None  # a BLOB (lm-eval's pickles) is never decoded
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if attr == "generate_until":
        return value if isinstance(value, str) else None
    if attr == "loglikelihood_rolling":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if (
        attr == "loglikelihood"
        and isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (int, float))
        and not isinstance(value[0], bool)
        and isinstance(value[1], bool)
    ):
        return (float(value[0]), value[1])
    return None


def _encode(value: Any) -> str | None:
    """JSON text for an answer, or None for one that JSON cannot hold faithfully (not cached)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return None


class AnswerStore:
    """One SQLite file of `key -> JSON answer` rows (committed one by one, so a kill loses at most one)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, attr: str, key: str) -> Any | None:
        row = self._con.execute(f"SELECT value FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        return None if row is None else _decode(attr, row[0])

    def put(self, key: str, value: Any) -> None:
        text = _encode(value)
        if text is not None:
            self._con.execute(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)", (key, text))

    def __len__(self) -> int:
        return int(self._con.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])

    def close(self) -> None:
        self._con.close()


def _hash_args(attr: str, args: Iterable[Any]) -> str:
    from lm_eval.api.model import hash_args

    return hash_args(attr, args)


def has_media(args: tuple[Any, ...]) -> bool:
    """Whether a request's arguments carry images or audio (lm-eval's third, multimodal argument)."""
    return len(args) > 2 and isinstance(args[2], dict) and any(args[2].get(k) for k in MEDIA_KEYS)


class _Hook:
    """lm-eval's `CacheHook` interface: the model reports each answer as soon as it has it (reports
    are dropped while `muted`: requests with media, whose reported key lacks the media)."""

    def __init__(self, store: AnswerStore | None) -> None:
        self.store = store
        self.muted = False

    def add_partial(self, attr: str, req: Iterable[Any], res: Any) -> None:
        if self.store is not None and not self.muted:
            self.store.put(_hash_args(attr, req), res)


class CachedLM:
    """An lm-eval model whose requests are answered from an `AnswerStore` where possible (the
    replacement of lm-eval's `CachingLM`, same keys, JSON rows). Registered as a virtual
    `lm_eval.api.model.LM`, so `simple_evaluate` takes it as a ready model."""

    def __init__(self, lm: Any, path: Path) -> None:
        self.lm = lm
        self.store = AnswerStore(path)
        self.hook = _Hook(self.store)
        lm.set_cache_hook(self.hook)

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self.lm, attr)
        if attr not in REQUEST_TYPES:
            return value
        return lambda requests: self._answer(attr, value, requests)

    def _answer(self, attr: str, run: Callable[[list[Any]], list[Any]], requests: list[Any]) -> list[Any]:
        answers: list[Any] = [None] * len(requests)
        todo: list[int] = []
        for i, req in enumerate(requests):
            sampled = attr == "generate_until" and bool(req.args[1].get("do_sample", False))
            cached = None if sampled else self.store.get(attr, _hash_args(attr, req.args))
            if cached is None:
                todo.append(i)
            else:
                answers[i] = cached
        if todo and any(has_media(requests[i].args) for i in todo):
            for i, answer in self._run_in_chunks(attr, run, [requests[i] for i in todo]).items():
                answers[todo[i]] = answer
            return answers
        fresh = run([requests[i] for i in todo]) if todo else []
        for i, answer in zip(todo, fresh, strict=True):
            answers[i] = answer
            self.store.put(_hash_args(attr, requests[i].args), answer)
        return answers

    def _run_in_chunks(self, attr: str, run: Callable[..., list[Any]], requests: list[Any]) -> dict[int, Any]:
        """Requests with media: one model call per batch, each batch's answers stored under their full
        keys when it returns (the model's own reports are muted). -> position in `requests` -> answer"""
        from lm_eval.api import model as lm_model  # its `tqdm` carries the evaluation's progress label

        size = getattr(self.lm, "batch_size", None)
        size = size if isinstance(size, int) and size > 0 else MEDIA_CHUNK
        order = sorted(range(len(requests)), key=lambda i: -len(str(requests[i].args[0])))
        quiet = "disable_tqdm" in inspect.signature(run).parameters
        out: dict[int, Any] = {}
        bar = lm_model.tqdm(total=len(requests), desc=f"Running {attr} requests", disable=not quiet)
        self.hook.muted = True
        try:
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                batch = [requests[i] for i in chunk]
                fresh = run(batch, disable_tqdm=True) if quiet else run(batch)
                for i, answer in zip(chunk, fresh, strict=True):
                    out[i] = answer
                    self.store.put(_hash_args(attr, requests[i].args), answer)
                bar.update(len(chunk))
        finally:
            self.hook.muted = False
            bar.close()
        return out

    def close(self) -> None:
        """Detach from the model (its hook goes back to a no-op) and close the file."""
        self.lm.set_cache_hook(_Hook(None))
        self.store.close()


def cache_file(cache_dir: Path, run_index: int, lm: Any) -> Path:
    """One file per lm-eval run and rank, as lm-eval names its own (`..._rank<N>.db`)."""
    rank = getattr(lm, "rank", 0) or int(os.environ.get("LOCAL_RANK", "0"))
    return Path(cache_dir) / f"answers-{run_index}_rank{rank}.db"


def _register() -> None:
    from lm_eval.api.model import LM

    LM.register(CachedLM)


_register()
