"""The artifact store: atomic publication, locking, cache tokens, verification."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import pytest

from shadowft.store import MANIFEST, ArtifactStore, artifact_key


def test_key_depends_on_everything_that_produced_it():
    k = artifact_key("graft", "1", {"alpha": 1.0}, {"instruct": "abc"})
    assert k == artifact_key("graft", "1", {"alpha": 1.0}, {"instruct": "abc"})
    assert k != artifact_key("graft", "2", {"alpha": 1.0}, {"instruct": "abc"})
    assert k != artifact_key("graft", "1", {"alpha": 0.5}, {"instruct": "abc"})
    assert k != artifact_key("graft", "1", {"alpha": 1.0}, {"instruct": "abd"})
    assert k != artifact_key("delta", "1", {"alpha": 1.0}, {"instruct": "abc"})


def test_build_publishes_once_with_manifest(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def produce(d: Path):
        calls.append(d)
        (d / "x.txt").write_text("hello")
        return {"note": "n"}

    a, built = store.build("s", "k1", produce, config={"c": 1}, inputs={"i": "fp"})
    assert built and (a.path / "x.txt").read_text() == "hello"
    m = store.manifest("s", "k1")
    assert m["config"] == {"c": 1} and m["inputs"] == {"i": "fp"} and m["note"] == "n" and m["bytes"] == 5
    b, built2 = store.build("s", "k1", produce)
    assert not built2 and b == a and len(calls) == 1


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def produce(d: Path):
        (d / "half").write_text("partial")
        raise RuntimeError("boom")

    store.cache_token("s", "k")  # what Prefect's cache key does before the task runs: announces a build id
    assert (tmp_path / "artifacts" / "s" / ".k.pending").exists()
    for _ in range(3):
        with pytest.raises(RuntimeError):
            store.build("s", "k", produce)
    assert store.get("s", "k") is None
    assert list((tmp_path / "artifacts" / "s").iterdir()) == []  # no temp dir, no pending id left behind


def test_dir_without_manifest_does_not_exist_and_verify_removes_it(tmp_path):
    store = ArtifactStore(tmp_path)
    for key in ("k", "k2"):  # what builds of these keys left when killed: they had taken the key's lock
        with store.lock("s", key):
            pass
    junk = store.path("s", "k")
    junk.mkdir(parents=True)
    (junk / "weights").write_text("half written")
    (junk.parent / ".k2.tmp-123-abc").mkdir()
    assert store.get("s", "k") is None
    report = store.verify()
    assert sorted(report["incomplete"]) == ["artifacts/s/.k2.tmp-123-abc", "artifacts/s/k"] and not report["removed"]
    report = store.verify(remove=True)
    assert len(report["removed"]) == 2 and not junk.exists()
    a, built = store.build("s", "k", lambda d: (d / "ok").write_text("1") and None)
    assert built and store.verify()["complete"] == ["artifacts/s/k"]


def test_cache_token_is_stable_until_the_artifact_is_deleted(tmp_path):
    store = ArtifactStore(tmp_path)
    before = store.cache_token("s", "k")
    assert store.cache_token("s", "k") == before  # the pending build id is reused
    a, _ = store.build("s", "k", lambda d: None)
    assert a.token == before == store.cache_token("s", "k")
    shutil.rmtree(a.path)
    after = store.cache_token("s", "k")
    assert after != before  # a rebuilt artifact never matches a cache entry of the deleted one


def _wait_for_a_waiter(lock: Path, timeout: float = 60.0) -> None:
    """Return once another process is blocked on `lock` (a `->` entry of /proc/locks on its inode)."""
    st = lock.stat()
    dev_ino = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("->" in line and dev_ino in line.split() for line in Path("/proc/locks").read_text().splitlines()):
            return
        time.sleep(0.01)
    raise TimeoutError(f"no process waited on {lock} within {timeout} s")


def _racing_build(root: str, out: str, start) -> None:
    store = ArtifactStore(root)

    def produce(d: Path):
        with open(out, "a") as f:
            f.write("built\n")
        _wait_for_a_waiter(store._lock_path("s", "same"))  # the other builder is inside build(), held off
        (d / "v").write_text("1")

    start.wait(60)  # both processes started: they enter build() together, whichever spawned faster
    _, built = store.build("s", "same", produce)
    with open(out, "a") as f:
        f.write(f"built={built}\n")


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="the test sees the lock's waiter in /proc/locks (Linux)")
def test_concurrent_builds_compute_once(tmp_path):
    """Two processes build one key at once: one computes while the other is seen blocked on the key's
    lock, then finds the artifact. Without the lock both would compute (and the first would wait in vain)."""
    log = tmp_path / "log"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_racing_build, args=(str(tmp_path / "store"), str(log), start)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(log.read_text().splitlines()) == ["built", "built=False", "built=True"]
    assert (ArtifactStore(tmp_path / "store").path("s", "same") / MANIFEST).exists()


def test_store_verify_finds_the_store_shadowft_run_uses(tmp_path, monkeypatch):
    """No --root: the run's default store (./runs/store) is found; when none exists, the message names
    every place checked and how to point elsewhere."""
    from typer.testing import CliRunner

    from shadowft.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHADOWFT_HOME", raising=False)
    runner = CliRunner()
    r = runner.invoke(app, ["store", "verify"])
    assert r.exit_code == 1
    assert str(tmp_path / "runs" / "store") in r.output and str(tmp_path / ".shadowft") in r.output
    assert "--root" in r.output and "--config" in r.output

    ArtifactStore(tmp_path / "runs" / "store").build("s", "k", lambda d: (d / "f").write_text("x") and None)
    r = runner.invoke(app, ["store", "verify"])
    assert r.exit_code == 0 and "1 complete artifact" in r.output and str(tmp_path / "runs" / "store") in r.output

    (tmp_path / "cfg.yaml").write_text("output:\n  root: elsewhere\n")
    r = runner.invoke(app, ["store", "verify", "--config", "cfg.yaml"])
    assert r.exit_code == 1 and str(tmp_path / "elsewhere" / "store") in r.output


def _tokens_while_building(root: str, keys: list[str], out: str) -> None:
    """What Prefect does per task: ask for the cache token, then build. Records (token, published token)."""
    store = ArtifactStore(root)
    rows = []
    for key in keys:
        try:
            token = store.cache_token("s", key)
            art, _ = store.build("s", key, lambda d: (d / "v").write_text("1") and None)
            rows.append(f"{key} {token} {art.token}")
        except Exception as exc:  # recorded, so the test names the failure instead of a dead process
            rows.append(f"{key} ERROR {type(exc).__name__}: {exc}")
    Path(out).write_text("\n".join(rows) + "\n")


def test_cache_token_is_atomic_with_publish_under_concurrent_builds(tmp_path):
    """4 processes x 150 keys, each asking for a key's cache token and building it: no call fails (a
    `.pending` file vanishing under a reader) and every token is the token of the published artifact."""
    keys = [f"k{i}" for i in range(150)]
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"out{i}" for i in range(4)]
    procs = [
        ctx.Process(
            target=_tokens_while_building, args=(str(tmp_path / "store"), keys[i % 2 :] + keys[: i % 2], str(o))
        )
        for i, o in enumerate(outs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = [line.split(" ", 2) for o in outs for line in o.read_text().splitlines()]
    errors = [r for r in rows if r[1] == "ERROR"]
    assert not errors, errors[:5]
    store = ArtifactStore(tmp_path / "store")
    wrong = [r for r in rows if not (r[1] == r[2] == store.get("s", r[0]).token)]
    assert not wrong, f"{len(wrong)} of {len(rows)} tokens differ from the published artifact's: {wrong[:3]}"


def test_verify_remove_keeps_what_the_store_did_not_write(tmp_path):
    """output.root pointed into <store>/artifacts: the run folders there (a stamp dir, `latest` symlink,
    history.jsonl, a run's temp dir) are not the store's; `--remove` keeps them and says so. A symlinked
    dir is never reported removed while it stays."""
    store = ArtifactStore(tmp_path)
    store.build("graft", "done", lambda d: (d / "w").write_text("1") and None)
    run = tmp_path / "artifacts" / "shadow-ft"
    (run / "20250101-120000").mkdir(parents=True)
    (run / "20250101-120000" / "report.md").write_text("# my run")
    (run / ".20250101-130000.tmp-99").mkdir()
    (run / "history.jsonl").write_text("{}\n")
    (run / "latest").symlink_to(run / "20250101-120000")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious").write_text("x")
    (tmp_path / "artifacts" / "graft" / "linked").symlink_to(outside)
    report = store.verify(remove=True)
    assert (run / "20250101-120000" / "report.md").read_text() == "# my run"
    assert (run / ".20250101-130000.tmp-99").is_dir() and (run / "history.jsonl").exists()
    assert (run / "latest").is_symlink() and (outside / "precious").exists()
    assert (tmp_path / "artifacts" / "graft" / "linked").is_symlink()
    assert report["removed"] == [] and report["incomplete"] == []
    assert "artifacts/shadow-ft/20250101-120000" in report["foreign"]
    assert "artifacts/graft/linked" in report["foreign"]
    assert store.get("graft", "done") is not None

    from typer.testing import CliRunner

    from shadowft.cli import app

    r = CliRunner().invoke(app, ["store", "verify", "--root", str(tmp_path), "--remove"])
    assert r.exit_code == 0 and "never removed" in r.output and "store is consistent" in r.output, r.output
    assert (run / "20250101-120000" / "report.md").exists()


def _build_that_waits(root: str, key: str, started, release) -> None:
    """A builder that has written half its artifact, holds the key's lock, and waits to be released."""

    def produce(d: Path):
        (d / "half").write_text("being written")
        started.set()
        if not release.wait(120):
            raise TimeoutError("never released")
        (d / "v").write_text("1")

    ArtifactStore(root).build("s", key, produce)


def test_verify_remove_skips_a_build_whose_builder_holds_the_lock(tmp_path):
    """A second process is building (it holds the key's lock, its temp dir is half written, its build id
    announced): `verify --remove` reports the temp dir and the pending id but deletes neither, and the
    build publishes with the announced id. The same leftovers of a builder killed with SIGKILL (its lock
    released by the kernel) are removed."""
    from typer.testing import CliRunner

    from shadowft.cli import app

    ctx = mp.get_context("spawn")
    store = ArtifactStore(tmp_path)
    stage_dir = tmp_path / "artifacts" / "s"
    leftovers: dict[str, list[str]] = {}
    for key in ("live", "killed"):
        announced = store.cache_token("s", key)  # what Prefect asks before the task runs
        started, release = ctx.Event(), ctx.Event()
        builder = ctx.Process(target=_build_that_waits, args=(str(tmp_path), key, started, release))
        builder.start()
        try:
            assert started.wait(120), "the builder did not start"
            tmp = [d for d in stage_dir.iterdir() if d.name.startswith(f".{key}.tmp-")]
            assert len(tmp) == 1 and (tmp[0] / "half").is_file()
            leftovers[key] = [f"artifacts/s/{tmp[0].name}", f"artifacts/s/.{key}.pending"]
            if key == "killed":
                builder.kill()  # SIGKILL: no cleanup runs; the kernel releases the lock
                builder.join(60)
                break
            report = store.verify(remove=True)
            assert leftovers["live"][0] in report["incomplete"] and leftovers["live"][1] in report["pending"]
            assert report["removed"] == [] and (tmp[0] / "half").is_file()
            r = CliRunner().invoke(app, ["store", "verify", "--root", str(tmp_path), "--remove"])
            assert r.exit_code == 0, r.output  # a running build's entries are not garbage
            assert not [line for line in r.output.splitlines() if line.endswith("removed")], r.output
            assert "can be removed" not in r.output and "kept: a running build holds it" in r.output, r.output
            assert (tmp[0] / "half").is_file() and (stage_dir / ".live.pending").is_file()
        finally:
            if builder.is_alive():  # never `set` an Event a SIGKILLed waiter slept on: notify waits for it forever
                release.set()
            builder.join(60)
        assert builder.exitcode == 0
        assert store.get("s", key).token == announced and (store.path("s", key) / "v").is_file()
    assert builder.exitcode == -9
    report = store.verify(remove=True)
    assert sorted(report["removed"]) == sorted(leftovers["killed"]), report
    assert not [d for d in stage_dir.iterdir() if d.name.startswith(".killed")]
    assert store.verify()["incomplete"] == [] and store.verify()["complete"] == ["artifacts/s/live"]
