"""Run untrusted, model-written Python in a contained subprocess.

Used by the code suites (`humaneval-offline`) to score completions by executing them, and only
when the user opted in (see `shadowft.evaluate`). Layers of containment, each independent:

1. **Fresh working directory**: a new temp dir is the child's cwd, `HOME` and `TMPDIR`; it is
   deleted afterwards.
2. **Scrubbed environment**: the child gets a minimal, fixed environment (`PATH`, `HOME`,
   `TMPDIR`, `LANG`); nothing of the parent's environment (no `HF_TOKEN`, no cloud keys) is
   passed on. The interpreter runs in isolated mode (`python -I`).
3. **Resource limits** (`setrlimit` before exec): CPU seconds, address space, file size, open
   files, number of processes, no core dumps.
4. **Wall-clock timeout** with a kill of the whole process group (the child is a session leader),
   and a kill of the group after a normal exit too, so no grandchild outlives the run.
5. **OS isolation where the kernel allows it** (probed once per process, reported in
   `SandboxResult.isolation`):
   - a new, empty network namespace (`unshare(CLONE_NEWNET)`, inside a new user namespace when
     not root): no interface but a down loopback, so nothing can be reached;
   - a new user namespace also makes `RLIMIT_NPROC` bind when the parent runs as root (root is
     otherwise exempt from it);
   - when the parent runs as root and the interpreter is readable by `nobody`, the child drops to
     uid/gid `nobody`, so the file system outside its temp dir is not writable.
6. **In-process guard** (always on): a Python audit hook installed before the program runs,
   which the program cannot remove. It refuses socket creation, process creation (fork, exec,
   spawn, subprocess, `os.system`), `ctypes`, writes/renames/deletes outside the temp dir, and
   reads under the parent's `$HOME` (except the interpreter's own files). Audit hooks are not a
   security boundary on their own (PEP 578); they are the fallback where the OS layers are not
   available, and the reason a network or fork attempt fails fast instead of timing out.

This is containment for benchmark code written by a model, not a jail for an adversary: run
evaluation of untrusted models inside a container or VM as well.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534

Status = Literal["passed", "failed", "timeout"]

#: The user's opt-in to running model-written code (lm-eval's and HF `evaluate`'s own variable).
CODE_OPT_IN = "HF_ALLOW_CODE_EVAL"


def code_execution_allowed(explicit: bool = False) -> bool:
    """Whether model-written code may run here: asked for explicitly, or `HF_ALLOW_CODE_EVAL=1`
    (the one rule for code suites and code rewards)."""
    return explicit or os.environ.get(CODE_OPT_IN) == "1"


# Runs in the child before the program: installs the audit-hook guard, then execs the program.
# argv: [-c, sandbox_dir, denied_read_roots_json, allowed_read_roots_json]
_PREAMBLE = r"""
import sys, os, json
_SBX = os.path.realpath(sys.argv[1])
_DENY_READ = [os.path.realpath(p) for p in json.loads(sys.argv[2])]
_ALLOW_READ = [os.path.realpath(p) for p in json.loads(sys.argv[3])]
_src = open(os.path.join(_SBX, "program.py"), encoding="utf-8").read()

def _under(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

def _real(p):
    if isinstance(p, int):
        return None
    try:
        p = os.fsdecode(p)
        return os.path.realpath(os.path.join(os.getcwd(), p))
    except Exception:
        return "<unresolvable>"

_BLOCK_ALWAYS = (
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "subprocess.Popen", "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
    "os.kill", "os.killpg", "signal.pthread_kill", "os.setuid", "os.setgid",
    "sys._current_frames",
)
_PATH_EVENTS = {
    "os.remove": 1, "os.rename": 2, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1,
    "os.symlink": 2, "os.link": 2, "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1,
    "os.chflags": 1, "os.lchflags": 1, "os.mkfifo": 1, "os.mknod": 1, "os.setxattr": 1,
    "os.removexattr": 1,
}
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def _deny(event, detail=""):
    raise PermissionError(f"shadowft sandbox: {event} is not allowed {detail}".strip())

def _guard(event, args):
    if event in _BLOCK_ALWAYS:
        _deny(event)
    if event == "import" and args and str(args[0]).split(".")[0] in _BLOCKED_IMPORTS:
        _deny(event, repr(args[0]))
    if event == "open":
        path, mode, flags = (list(args) + [None, None, None])[:3]
        real = _real(path)
        if real is None:
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and not _under(real, _SBX):
            _deny("writing", real)
        if not writing and any(_under(real, d) for d in _DENY_READ) and not any(
            _under(real, a) for a in _ALLOW_READ
        ):
            _deny("reading", real)
    elif event in _PATH_EVENTS:
        for p in args[: _PATH_EVENTS[event]]:
            real = _real(p)
            if real is not None and not _under(real, _SBX):
                _deny(event, real)

sys.addaudithook(_guard)
del json
sys.argv = ["program.py"]
_g = {"__name__": "__main__", "__file__": os.path.join(_SBX, "program.py"), "__builtins__": __builtins__}
exec(compile(_src, "program.py", "exec"), _g)
"""


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run. `passed` means the program exited with status 0 in time."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc().unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _interpreter_readable_by_nobody(python: str) -> bool:
    """Every directory on the way to the real interpreter must be traversable by others."""
    path = Path(os.path.realpath(python))
    for p in [*reversed(path.parents), path]:
        try:
            mode = p.stat().st_mode
        except OSError:
            return False
        if p.is_dir() and not mode & 0o001:
            return False
    return bool(path.stat().st_mode & 0o005)


@functools.cache
def probe_isolation(python: str = sys.executable) -> dict[str, object]:
    """Find which OS layers this machine permits (cached per process)."""
    is_root = os.geteuid() == 0
    drop_to_nobody = is_root and _interpreter_readable_by_nobody(python)
    result: dict[str, object] = {
        "network": "audit-hook",
        "user_namespace": False,
        "uid": "nobody" if drop_to_nobody else "unchanged",
        "python_guard": True,
    }
    uid = NOBODY if drop_to_nobody else None
    # Probed with the child's own setup (namespaces, then the uid drop), so what is found is what runs:
    # as root with a system Python readable by nobody, a new user namespace has no mapping for nobody
    # (setgid fails in it), and the network namespace alone (root may create one) is what works.
    for flags, userns in ((CLONE_NEWUSER | CLONE_NEWNET, True), (CLONE_NEWNET, False)):
        if flags == CLONE_NEWNET and not is_root:
            continue
        try:
            proc = subprocess.run(
                [python, "-I", "-S", "-c", "import socket; print(len(socket.if_nameindex()))"],
                preexec_fn=functools.partial(_child_setup, flags, uid, 30, 1024, 1, 16),
                cwd="/",
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env={"PATH": "/usr/bin:/bin"},
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0:
            result["network"] = "netns"
            result["user_namespace"] = userns
            result["_flags"] = flags
            break
    return result


def _child_setup(flags: int, uid: int | None, cpu_s: int, memory_mb: int, file_mb: int, max_procs: int) -> None:
    """Runs in the forked child before exec (keep it to async-signal-safe-ish system calls)."""
    import resource

    os.setsid()
    if flags:
        _unshare(flags)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    limits = {
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),
        resource.RLIMIT_AS: (memory_mb * 2**20, memory_mb * 2**20),
        resource.RLIMIT_FSIZE: (file_mb * 2**20, file_mb * 2**20),
        resource.RLIMIT_NOFILE: (256, 256),
        resource.RLIMIT_NPROC: (max_procs, max_procs),
        resource.RLIMIT_CORE: (0, 0),
    }
    for what, value in limits.items():
        resource.setrlimit(what, value)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _clip(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + f"\n... [{len(text) - limit} chars cut]"


def run_untrusted(
    code: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    max_procs: int = 16,
    max_file_mb: int = 16,
    python: str | None = None,
    python_guard: bool = True,
    output_limit: int = 20_000,
) -> SandboxResult:
    """Execute `code` as a Python program in a contained subprocess and report how it ended.

    `timeout_s` bounds wall-clock time (CPU time is bounded at about the same); `memory_mb` bounds
    the address space; `max_procs` the number of processes (where the kernel enforces it);
    `max_file_mb` the size of any file written. `python_guard=False` turns the in-process audit
    hook off and leaves only the OS layers (for testing them).
    """
    python = python or sys.executable
    iso = dict(probe_isolation(python))
    flags = int(iso.pop("_flags", 0))  # type: ignore[call-overload]
    uid = NOBODY if iso["uid"] == "nobody" else None
    iso["python_guard"] = python_guard

    workdir = Path(tempfile.mkdtemp(prefix="shadowft-sbx-"))
    try:
        (workdir / "program.py").write_text(code, encoding="utf-8")
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(workdir / "program.py", uid, uid)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "TMPDIR": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
        }
        if python_guard:
            home = os.path.expanduser("~")
            allow = sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(python)})
            argv = [python, "-I", "-B", "-c", _PREAMBLE, str(workdir), json.dumps([home]), json.dumps(allow)]
        else:
            argv = [python, "-I", "-B", str(workdir / "program.py")]
        cpu_s = max(1, int(timeout_s) + 1)
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            preexec_fn=functools.partial(  # noqa: PLW1509 - setrlimit/unshare must run in the child
                _child_setup, flags, uid, cpu_s, memory_mb, max_file_mb, max_procs
            ),
        )
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
        finally:
            _kill_group(proc)
        duration = time.monotonic() - start
        rc = proc.returncode
        if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL) and duration >= timeout_s:
            status: Status = "timeout"
        else:
            status = "passed" if rc == 0 else "failed"
        return SandboxResult(
            status=status,
            returncode=rc,
            stdout=_clip(out, output_limit),
            stderr=_clip(err, output_limit),
            duration_s=round(duration, 4),
            isolation=iso,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
