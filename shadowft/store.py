"""Content-addressed artifact store: every stage's output, keyed by what produced it.

An artifact's key hashes the stage name, the stage's own config, the keys (or fingerprints) of
its inputs and a stage code version. It is built in a temporary directory under a per-key file
lock and published by one atomic rename with a `manifest.json` written last; a directory without
a manifest does not exist. Two runs that need the same artifact at once compute it once: the
second waits on the lock and reuses it.

Each published artifact also carries a random `build_id`. Orchestrators that keep their own
result cache (Prefect) key it on `cache_token()` = key + build id, so a deleted artifact can never
be answered from their cache with a dangling path: its next build gets a new id. The announced id
(`.<key>.pending`) and the publish are serialised by a short per-key token lock, so a token is
always the id that the artifact is (or will be) published with.

`verify --remove` deletes only what the store's own builds leave behind (a key it has locked);
anything else under `artifacts/` (a run folder when `output.root` points there, a symlink) is
reported as foreign and kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shadowft import __version__
from shadowft.errors import as_disk_full
from shadowft.files import write_json_atomic, write_text_atomic

MANIFEST = "manifest.json"
DEFAULT_HOME = Path(".shadowft")


def default_home() -> Path:
    """`$SHADOWFT_HOME`, else `.shadowft` in the working directory."""
    return Path(os.environ.get("SHADOWFT_HOME", DEFAULT_HOME)).absolute()


def run_store(output_root: str | Path = "./runs") -> Path:
    """The store a run writes to: `$SHADOWFT_HOME` when set, else `<output.root>/store`."""
    if "SHADOWFT_HOME" in os.environ:
        return default_home()
    return Path(output_root).expanduser().absolute() / "store"


def find_store(config_output_root: str | Path | None = None) -> tuple[Path, list[Path]]:
    """The store that `shadowft run` uses here, for commands given no --root. -> (root, candidates checked)

    With a run config's `output.root`: its store. Otherwise `$SHADOWFT_HOME`, else the first existing
    of `./runs/store` (the default `output.root`) and `./.shadowft` (library default)."""
    if config_output_root is not None or "SHADOWFT_HOME" in os.environ:
        root = run_store(config_output_root or "./runs")
        return root, [root]
    candidates = [run_store("./runs"), default_home()]
    for c in candidates:
        if (c / "artifacts").exists() or (c / "work").exists():
            return c, candidates
    return candidates[0], candidates


class Artifact(BaseModel):
    """A small, serialisable handle to a published artifact (what tasks return)."""

    stage: str
    key: str
    path: Path
    build_id: str

    @property
    def token(self) -> str:
        return f"{self.key}-{self.build_id}"


def artifact_key(stage: str, version: str, config: Any, inputs: dict[str, str]) -> str:
    """The content address of a stage's output (sha256 of a canonical JSON, 24 hex digits)."""
    payload = json.dumps(
        {"stage": stage, "version": version, "config": config, "inputs": inputs},
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class ArtifactStore:
    """Artifacts under `root/artifacts/<stage>/<key>/`, work dirs under `root/work/<stage>/<key>/`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).absolute() if root is not None else default_home()

    # -- layout ----------------------------------------------------------------------------
    def path(self, stage: str, key: str) -> Path:
        return self.root / "artifacts" / stage / key

    def work_dir(self, stage: str, key: str) -> Path:
        """A persistent scratch dir for a stage that resumes after a crash (e.g. checkpoints)."""
        d = self.root / "work" / stage / key
        d.mkdir(parents=True, exist_ok=True)
        lock = self._lock_path(stage, key)  # marks the key as the store's (see `verify`)
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
        return d

    def _pending(self, stage: str, key: str) -> Path:
        return self.root / "artifacts" / stage / f".{key}.pending"

    def _lock_path(self, stage: str, key: str) -> Path:
        return self.root / "locks" / stage / f"{key}.lock"

    def _token_lock_path(self, stage: str, key: str) -> Path:
        return self.root / "locks" / stage / f"{key}.token.lock"

    def _is_ours(self, stage: str, key: str) -> bool:
        """Whether the store has ever built or announced `key` (every build and token takes its lock)."""
        return self._lock_path(stage, key).exists() or self._token_lock_path(stage, key).exists()

    # -- queries ---------------------------------------------------------------------------
    def manifest(self, stage: str, key: str) -> dict | None:
        f = self.path(stage, key) / MANIFEST
        try:
            return json.loads(f.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def get(self, stage: str, key: str) -> Artifact | None:
        m = self.manifest(stage, key)
        if m is None:
            return None
        return Artifact(stage=stage, key=key, path=self.path(stage, key), build_id=m["build_id"])

    def cache_token(self, stage: str, key: str) -> str:
        """key + build id of the published artifact, or of the build that will publish it.

        Under the key's token lock, which the publish also takes: the answer is either the published
        artifact's id or the pending one that the next publish will use, never one that vanishes
        between reading and publishing."""
        found = self.get(stage, key)
        if found is not None:
            return found.token
        with self._token_lock(stage, key):
            found = self.get(stage, key)  # published while we waited
            if found is not None:
                return found.token
            pending = self._pending(stage, key)
            build_id = _read_id(pending)
            if not build_id:
                build_id = uuid.uuid4().hex[:12]
                write_text_atomic(pending, build_id)
        return f"{key}-{build_id}"

    @contextmanager
    def _token_lock(self, stage: str, key: str) -> Iterator[None]:
        """A short lock around the pending build id: announcing it, publishing with it, discarding it."""
        with _flock(self._token_lock_path(stage, key)):
            yield

    # -- building --------------------------------------------------------------------------
    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """An exclusive, process-safe lock on one artifact key (released if the holder dies)."""
        with _flock(self._lock_path(stage, key)):
            yield

    def build(
        self,
        stage: str,
        key: str,
        produce: Callable[[Path], dict | None],
        config: Any = None,
        inputs: dict[str, str] | None = None,
    ) -> tuple[Artifact, bool]:
        """Return the artifact, producing it with `produce(tmp_dir)` if absent. -> (artifact, built)

        `produce` writes the artifact's files into `tmp_dir` and may return extra manifest fields.
        """
        found = self.get(stage, key)
        if found is not None:
            return found, False
        with self.lock(stage, key):
            found = self.get(stage, key)  # built by someone else while we waited
            if found is not None:
                return found, False
            final = self.path(stage, key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # an incomplete leftover without a manifest: it does not exist
                shutil.rmtree(final)
            for dead in final.parent.glob(f".{key}.tmp-*"):  # we hold the key's lock: its builder died
                shutil.rmtree(dead, ignore_errors=True)
            tmp = final.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            tmp.mkdir()
            t0 = time.perf_counter()
            try:
                extra = produce(tmp) or {}
                manifest = {
                    "stage": stage,
                    "key": key,
                    "build_id": "",
                    "config": config,
                    "inputs": inputs or {},
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "bytes": _dir_size(tmp),
                    "shadowft_version": __version__,
                    **extra,
                }
                with self._token_lock(stage, key):  # the announced id is the one published
                    pending = self._pending(stage, key)
                    manifest["build_id"] = _read_id(pending) or uuid.uuid4().hex[:12]
                    write_json_atomic(tmp / MANIFEST, manifest)
                    os.replace(tmp, final)
                    pending.unlink(missing_ok=True)
                # the stage's scratch (checkpoints to resume from) is garbage once its artifact exists
                shutil.rmtree(self.root / "work" / stage / key, ignore_errors=True)
                self._log_build(manifest)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                # the announced build id dies with the failed build (Prefect caches no failure): a
                # later build announces a new one, so failures leave nothing behind in the store
                with self._token_lock(stage, key):
                    self._pending(stage, key).unlink(missing_ok=True)
                full = as_disk_full(exc, f"the {stage} artifact in {self.root}")
                if full is not None:
                    raise full from None
                raise
            return Artifact(stage=stage, key=key, path=final, build_id=manifest["build_id"]), True

    def _log_build(self, manifest: dict) -> None:
        """One line per published artifact in `builds.jsonl` (what was computed, when, how long)."""
        line = {k: manifest[k] for k in ("stage", "key", "build_id", "created", "seconds", "bytes")}
        with open(self.root / "builds.jsonl", "a") as f:
            f.write(json.dumps({**line, "pid": os.getpid()}) + "\n")

    def builds(self) -> list[dict]:
        log = self.root / "builds.jsonl"
        return [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []

    # -- maintenance -----------------------------------------------------------------------
    def verify(self, remove: bool = False) -> dict[str, list[str]]:
        """Check the store; with `remove`, delete what is garbage (never what a live build holds).

        - complete: published artifacts (a manifest);
        - incomplete: temp dirs of crashed builds and dirs without manifest (garbage: removed);
        - stale_work: work dirs (checkpoints) of artifacts already published (garbage: removed);
        - resumable: work dirs of artifacts not yet published: a re-run resumes from them (kept);
        - pending: build ids announced to an orchestrator's cache for artifacts not yet published
          (a crashed or running build; harmless, removed when no build holds the key);
        - foreign: what the store did not write (a key it never locked, a symlink, a stray file),
          e.g. run folders when `output.root` points into the store: reported, never removed;
        - building: the incomplete / pending / stale entries a running build holds (its lock):
          listed under their kind too, never removed, not garbage;
        - removed: what `remove` deleted (only what is really gone).
        """
        found: dict[str, list[str]] = {
            "complete": [],
            "incomplete": [],
            "stale_work": [],
            "resumable": [],
            "pending": [],
            "foreign": [],
            "building": [],
            "removed": [],
        }
        self._verify_work(found, remove)
        base = self.root / "artifacts"
        if not base.is_dir() or base.is_symlink():
            return found
        for stage_dir in sorted(base.iterdir()):
            if stage_dir.is_symlink() or not stage_dir.is_dir():
                found["foreign"].append(str(stage_dir.relative_to(self.root)))
                continue
            stage = stage_dir.name
            for d in sorted(stage_dir.iterdir()):
                rel = str(d.relative_to(self.root))
                key = _key_of(d.name)
                if d.is_symlink() or not self._is_ours(stage, key):
                    found["foreign"].append(rel)
                    continue
                if d.name == f".{key}.pending" and d.is_file():
                    if self.get(stage, key) is not None:
                        continue  # published between our listing and now
                    found["pending"].append(rel)
                    if self._in_progress(stage, d):
                        found["building"].append(rel)
                    elif remove:
                        with self._token_lock(stage, key):
                            d.unlink(missing_ok=True)
                        found["removed"].append(rel)
                    continue
                if d.name == key and d.is_dir() and (d / MANIFEST).is_file():
                    found["complete"].append(rel)
                    continue
                if not d.is_dir() or (d.name != key and not d.name.startswith(f".{key}.tmp-")):
                    found["foreign"].append(rel)  # a name the store never gives
                    continue
                found["incomplete"].append(rel)
                if self._in_progress(stage, d):
                    found["building"].append(rel)
                elif remove:
                    _remove(d, found["removed"], rel)
        return found

    def _verify_work(self, found: dict[str, list[str]], remove: bool) -> None:
        base = self.root / "work"
        if not base.is_dir() or base.is_symlink():
            return
        for stage_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
            for d in sorted(p for p in stage_dir.iterdir() if p.is_dir() or p.is_symlink()):
                rel = str(d.relative_to(self.root))
                if d.is_symlink() or not self._is_ours(stage_dir.name, d.name):
                    found["foreign"].append(rel)
                    continue
                if self.get(stage_dir.name, d.name) is None:
                    found["resumable"].append(rel)
                    continue
                found["stale_work"].append(rel)
                if self._in_progress(stage_dir.name, d):
                    found["building"].append(rel)
                elif remove:
                    _remove(d, found["removed"], rel)

    def _in_progress(self, stage: str, d: Path) -> bool:
        """A temp dir (or work dir, or pending file) whose builder still holds the key's lock is not garbage."""
        path = self._lock_path(stage, _key_of(d.name))
        if not path.exists():
            return False
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    """An exclusive, process-safe lock held on `path` (released if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_id(pending: Path) -> str:
    """The announced build id, or "" when none is announced."""
    try:
        return pending.read_text().strip()
    except FileNotFoundError:
        return ""


def _key_of(name: str) -> str:
    """The key an entry of a stage dir belongs to: `KEY`, `.KEY.tmp-*`, `.KEY.pending`."""
    if name.startswith("."):
        return name[1:].split(".tmp-")[0].removesuffix(".pending")
    return name


def _remove(d: Path, removed: list[str], rel: str) -> None:
    """Delete the garbage dir (or file) `d`, never following a symlink; record it only once gone."""
    if d.is_dir() and not d.is_symlink():
        shutil.rmtree(d, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            d.unlink()
    if not os.path.lexists(d):
        removed.append(rel)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
