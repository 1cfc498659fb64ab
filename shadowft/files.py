"""Atomic file writes: a reader sees the old file or the new one, never half of one.

One implementation for every JSON the project writes beside a running job (manifests, loss curves,
results), because a crash mid-write must not leave a file that later fails to parse. And the output
dirs of the weight-surgery commands (`--out`, `--overwrite`): never an input, never a folder the
command did not write, and never published over an output that another process wrote meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shadowft.errors import OutputExistsError, ShadowFTError, as_disk_full


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write `text` to a unique temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path | str, data: Any) -> None:
    """`data` as indented JSON (non-JSON values such as paths as their text), written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


# -- output directories of commands that take --out / --overwrite ---------------------------------


def refuse_overlap(out: Path | str, inputs: Iterable[Path | str | None]) -> None:
    """Refuse an `out` that is an input, lies inside one, or contains one (paths resolved, symlinks
    followed): publishing (or `--overwrite`) would replace the input."""
    o = Path(out).expanduser().absolute().resolve()
    for p in inputs:
        if p is None:
            continue
        i = Path(p).expanduser().absolute().resolve()
        if i == o or i in o.parents:
            raise ShadowFTError(
                f"--out {out} would overwrite the input {p}", hint="write the result to a new directory"
            )
        if o in i.parents:
            raise ShadowFTError(
                f"--out {out} contains the input {p}: replacing it would delete that input",
                hint="write the result to a new directory outside the inputs",
            )


def refuse_nonempty(out: Path | str) -> None:
    """A stage's output dir must be new or empty (the artifact store hands each stage a fresh one)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"output directory {out} exists and is not empty", hint="choose a new directory")


def check_output_dir(out: Path | str, overwrite: bool, marker: str | None = None) -> None:
    """Refuse a non-empty `out` unless `overwrite`; with a `marker`, `overwrite` replaces only a dir that
    holds that file (the provenance record the command itself writes), never an arbitrary folder.
    Checked before any expensive work, and again when the result is published."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is a file", hint="choose another --out path")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ShadowFTError(
                    f"cannot create the output {out}: {parent} is a file", hint="choose another --out path"
                )
            break
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"output directory {out} already exists and is not empty",
            hint="choose another --out, or pass --overwrite to replace it",
        )
    if marker is not None and not (out / marker).is_file():
        raise OutputExistsError(
            f"output directory {out} is not empty and was not written by shadowft (no {marker}): "
            "--overwrite replaces only an earlier output of this command",
            hint="choose another --out, or empty or remove that directory yourself",
        )


@contextmanager
def atomic_output_dir(out: Path | str, *, overwrite: bool = False, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary dir beside `out`; when the body succeeds, publish it as `out` by a rename.

    Without `overwrite` the rename never replaces an output that appeared meanwhile (another process
    publishing the same `out`): this one then fails with `OutputExistsError` and the other's output
    stays. With `overwrite` the replaced dir must still pass `check_output_dir` at publish time.
    Temp dirs left beside `out` by a killed writer on this host are removed first.
    """
    out = Path(out).absolute()
    check_output_dir(out, overwrite, marker)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_temp_dirs(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{_HOST}-{os.getpid()}-", dir=out.parent))
    except OSError as exc:  # a parent that is a file, a read-only mount, no permission
        raise ShadowFTError(
            f"cannot create the output {out}: {exc.strerror or exc}",
            hint="choose an --out in a directory you can write to",
        ) from None
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would survive the rename
    try:
        yield tmp
        _rename_into_place(tmp, out, overwrite, marker)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = as_disk_full(exc, str(out))
        if full is not None:
            raise full from None
        raise


def _rename_into_place(tmp: Path, out: Path, overwrite: bool, marker: str | None) -> None:
    if overwrite and out.exists():
        check_output_dir(out, overwrite, marker)  # again: the target may have changed since the start
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "old")
        try:
            _rename_no_replace(tmp, out)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        _rename_no_replace(tmp, out)


def _rename_no_replace(src: Path, dst: Path) -> None:
    """Rename the dir `src` to `dst` unless `dst` exists with content (rename(2) replaces only an empty
    dir), so two writers of one `dst` cannot both succeed."""
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise OutputExistsError(
                f"output {dst} appeared while this result was being written (another process wrote it); "
                "nothing was replaced",
                hint="choose another --out, or run again with --overwrite to replace it",
            ) from None
        raise


_HOST = re.sub(r"[^A-Za-z0-9]", "", os.uname().nodename)[:32] or "host"


def _remove_dead_temp_dirs(out: Path) -> list[Path]:
    """Delete temp dirs beside `out` left by a writer on this host that was killed (SIGKILL, power
    loss): their process no longer exists. A live writer's dir, or another host's, is left alone."""
    removed = []
    pattern = re.compile(re.escape(f".{out.name}.tmp-{_HOST}-") + r"(\d+)-")
    for d in out.parent.glob(f".{out.name}.tmp-{_HOST}-*"):
        m = pattern.match(d.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter before Python 3.13's os)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
