"""Process management for `shadowft serve`: the Prefect server, the work pool, the deployments and a
worker, in one command.

This module starts Prefect only as child processes (`python -m prefect ...`) and never imports it,
so it belongs to the library (usable without the flows) rather than to `flows/` (composition only).

    shadowft serve                       # UI at http://127.0.0.1:4200, Ctrl-C stops everything
    shadowft serve --port 4300 --nightly-data ~/data/today.jsonl
    shadowft serve --config my-run.yaml  # the deployments' defaults come from my-run.yaml

Steps: start `prefect server start` (telemetry off) and wait for its health check; create the
`process` work pool; run `prefect deploy --all` on deployments/prefect.yaml from the repository
root (the deployments `shadow-ft/manual` and `shadow-ft/nightly`); start `prefect worker start`;
print the UI address; on Ctrl-C (or SIGTERM) stop the worker, then the server.

Every child runs in its own process group with the same environment: PREFECT_HOME (the user's
unless --prefect-home), PREFECT_API_URL pointing at this server, SHADOWFT_HOME if set.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from shadowft import lifeline
from shadowft.console import console, err_console
from shadowft.errors import ShadowFTError

PROJECT = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT / "deployments" / "prefect.yaml"
POOL = "shadowft-process"
FLOW = "shadow-ft"


def serve_env(prefect_home: Path | None, api_url: str, nightly_data: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_API_URL=api_url,
        SHADOWFT_NIGHTLY_DATA=str(nightly_data),
    )
    env.pop("PREFECT_API_KEY", None)  # a local server, not Prefect Cloud
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    return env


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait_healthy(api_url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ShadowFTError(f"the Prefect server exited with code {proc.returncode}", hint="see its log above")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ShadowFTError(f"the Prefect server did not answer at {api_url} within {timeout:.0f}s")


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path | None) -> subprocess.Popen:
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
    )


def _stop(proc: subprocess.Popen, name: str, grace: float = 15.0) -> None:
    """Stop a child and everything it started (its process group): SIGINT, then SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    err_console.print(f"[red]{name} (pid {proc.pid}) did not stop[/]")


def create_pool(env: dict[str, str]) -> None:
    """Create the process work pool (or keep the existing one)."""
    res = subprocess.run(
        _prefect("work-pool", "create", POOL, "--type", "process", "--overwrite"),
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0:
        raise ShadowFTError(f"creating work pool {POOL!r} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


def deploy(env: dict[str, str]) -> None:
    """`prefect deploy --all` on deployments/prefect.yaml, run from the repository root."""
    res = subprocess.run(
        _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)),
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0:
        raise ShadowFTError(f"prefect deploy failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")


def override_parameters(env: dict[str, str], config: dict, nightly_data: Path) -> None:
    """Make `config` the default parameters of both deployments (nightly: its data path and name)."""
    nightly = json.loads(json.dumps(config))
    nightly["data"]["sources"] = [str(nightly_data)]
    nightly["output"]["name"] = "nightly"
    code = (
        "import json, sys\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.actions import DeploymentUpdate\n"
        "params = json.load(sys.stdin)\n"
        "with get_client(sync_client=True) as c:\n"
        "    for name, cfg in params.items():\n"
        "        d = c.read_deployment_by_name(name)\n"
        "        c.update_deployment(d.id, DeploymentUpdate(parameters={'config': cfg}))\n"
    )
    payload = json.dumps({f"{FLOW}/manual": config, f"{FLOW}/nightly": nightly})
    res = subprocess.run(
        [sys.executable, "-c", code], input=payload, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    if res.returncode != 0:
        raise ShadowFTError(f"setting the deployments' parameters failed:\n{res.stderr[-3000:]}")


def serve(
    host: str = "127.0.0.1",
    port: int = 4200,
    prefect_home: Path | None = None,
    nightly_data: Path | None = None,
    config: Path | None = None,
    overrides: list[str] | None = None,
    worker: bool = True,
    log_dir: Path | None = None,
    startup_timeout: float = 120.0,
) -> None:
    """Serve the Prefect UI with the Shadow-FT deployments and a worker (Ctrl-C stops all of it)."""
    cfg_data = None
    if config is not None or overrides:
        from shadowft.config import load_config

        cfg_data = load_config(config, overrides or []).model_dump(mode="json")
    if nightly_data is None:
        nightly_data = Path(os.environ.get("SHADOWFT_NIGHTLY_DATA") or "data/nightly.jsonl")
    nightly_data = nightly_data.expanduser().absolute()
    if not _port_free(host, port):
        raise ShadowFTError(f"port {port} on {host} is in use", hint="choose another with --port")
    client_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    api_url = f"http://{client_host}:{port}/api"
    env = serve_env(prefect_home.expanduser().absolute() if prefect_home else None, api_url, nightly_data)
    if prefect_home is not None:
        Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)

    def on_term(*_: Any) -> None:
        raise KeyboardInterrupt

    # A supervisor sends SIGTERM, then SIGKILL a few seconds later: the graceful stop below may not
    # finish, so a watcher stops the server and worker (their own sessions) once this process is gone.
    lifeline.start()

    signal.signal(signal.SIGTERM, on_term)
    # A process started in the background inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: install the handler ourselves so that Ctrl-C always stops what we started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        console.print(
            f"starting the Prefect server on {host}:{port} (PREFECT_HOME={env.get('PREFECT_HOME', 'default')})"
        )
        server = _start(
            _prefect("server", "start", "--host", host, "--port", str(port)),
            env,
            PROJECT,
            log_dir / "server.log" if log_dir else None,
        )
        procs.append(("server", server))
        _wait_healthy(api_url, server, startup_timeout)
        create_pool(env)
        deploy(env)
        if cfg_data is not None:
            override_parameters(env, cfg_data, nightly_data)
        console.print(
            f"deployed {FLOW}/manual and {FLOW}/nightly (nightly data: {nightly_data}) on pool {POOL}", soft_wrap=True
        )
        if not nightly_data.exists():
            err_console.print(
                f"[yellow]note:[/] {nightly_data} does not exist yet; the nightly run fails until it does"
            )
        if worker:
            procs.append(
                (
                    "worker",
                    _start(
                        _prefect("worker", "start", "--pool", POOL, "--type", "process"),
                        env,
                        PROJECT,
                        log_dir / "worker.log" if log_dir else None,
                    ),
                )
            )
        ui = f"http://{client_host}:{port}"
        console.print(
            f"[bold green]Prefect UI: {ui}[/]  deployments: {ui}/deployments  (Ctrl-C stops)",
            highlight=False,
            soft_wrap=True,
        )
        while True:
            for name, p in procs:
                if p.poll() is not None:
                    raise ShadowFTError(f"the {name} exited with code {p.returncode}")
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        for name, p in reversed(procs):  # the worker first (a flow run in flight is cancelled), then the server
            _stop(p, name, grace=5.0 if name == "worker" else 15.0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
