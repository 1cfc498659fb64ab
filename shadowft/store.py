"""Content-addressed artifact store: every stage's output, keyed by what produced it.

An artifact's key hashes the stage name, the stage's own config, the keys (or fingerprints) of
its inputs and a stage code version. It is built in a temporary directory under a per-key file
lock and published by one atomic rename with a `manifest.json` written last; a directory without
a manifest does not exist. Two runs that need the same artifact at once compute it once: the
second waits on the lock and reuses it.

Each published artifact also carries a random `build_id`. Orchestrators that keep their own
result cache (Prefect) key it on `cache_token()` = key + build id, so a deleted artifact can never
be answered from their cache with a dangling path: its next build gets a new id.
"""

from __future__ import annotations

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
from shadowft.files import write_json_atomic

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
        return d

    def _pending(self, stage: str, key: str) -> Path:
        return self.root / "artifacts" / stage / f".{key}.pending"

    def _lock_path(self, stage: str, key: str) -> Path:
        return self.root / "locks" / stage / f"{key}.lock"

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
        """key + build id of the published artifact, or of the build that will publish it."""
        found = self.get(stage, key)
        if found is not None:
            return found.token
        pending = self._pending(stage, key)
        pending.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(pending, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            with os.fdopen(fd, "w") as f:
                f.write(uuid.uuid4().hex[:12])
        except FileExistsError:
            pass
        build_id = pending.read_text().strip()
        if not build_id:  # a concurrent creator has not written it yet
            time.sleep(0.05)
            build_id = pending.read_text().strip()
        return f"{key}-{build_id}"

    # -- building --------------------------------------------------------------------------
    @contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """An exclusive, process-safe lock on one artifact key (released if the holder dies)."""
        path = self._lock_path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

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
                pending = self._pending(stage, key)
                build_id = pending.read_text().strip() if pending.exists() else ""
                manifest = {
                    "stage": stage,
                    "key": key,
                    "build_id": build_id or uuid.uuid4().hex[:12],
                    "config": config,
                    "inputs": inputs or {},
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "bytes": _dir_size(tmp),
                    "shadowft_version": __version__,
                    **extra,
                }
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
        - removed: what `remove` deleted.
        """
        found: dict[str, list[str]] = {
            "complete": [],
            "incomplete": [],
            "stale_work": [],
            "resumable": [],
            "pending": [],
            "removed": [],
        }
        self._verify_work(found, remove)
        base = self.root / "artifacts"
        if not base.exists():
            return found
        for stage_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for d in sorted(stage_dir.iterdir()):
                if d.name.startswith(".") and d.name.endswith(".pending"):
                    key = d.name[1 : -len(".pending")]
                    if self.get(stage_dir.name, key) is not None:
                        continue  # published between our listing and now
                    rel = str(d.relative_to(self.root))
                    found["pending"].append(rel)
                    if remove and not self._in_progress(stage_dir.name, d):
                        d.unlink(missing_ok=True)
                        found["removed"].append(rel)
                    continue
                ok = d.is_dir() and not d.name.startswith(".") and (d / MANIFEST).is_file()
                rel = str(d.relative_to(self.root))
                if ok:
                    found["complete"].append(rel)
                    continue
                found["incomplete"].append(rel)
                if remove and not self._in_progress(stage_dir.name, d):
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
                    found["removed"].append(rel)
        return found

    def _verify_work(self, found: dict[str, list[str]], remove: bool) -> None:
        base = self.root / "work"
        if not base.exists():
            return
        for stage_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            for d in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
                rel = str(d.relative_to(self.root))
                if self.get(stage_dir.name, d.name) is None:
                    found["resumable"].append(rel)
                    continue
                found["stale_work"].append(rel)
                if remove and not self._in_progress(stage_dir.name, d):
                    shutil.rmtree(d, ignore_errors=True)
                    found["removed"].append(rel)

    def _in_progress(self, stage: str, d: Path) -> bool:
        """A temp dir (or work dir, or pending file) whose builder still holds the key's lock is not garbage."""
        key = d.name.lstrip(".").split(".tmp-")[0].removesuffix(".pending")
        path = self._lock_path(stage, key)
        if not path.exists():
            return False
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
