"""Heavy stages on a Ray cluster (`resources.cluster`): connecting, the shared-store check, placements.

Ray places the work (a heavy stage is a Ray task asking for GPUs and CPUs; `tasks._cluster` makes it
one); this module holds what needs no orchestrator: which node a process runs on, whether every node
sees the artifact store, and the record of where each stage ran (`placements.jsonl` in the store, read
into the run folder's report). Ray is an optional dependency: `pip install 'shadowft[cluster]'`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from shadowft.errors import ShadowFTError

PLACEMENTS = "placements.jsonl"


def ray_address(cluster: str) -> str:
    """The address `ray.init` takes for a `resources.cluster` value other than local."""
    return cluster  # "auto" (RAY_ADDRESS, else the cluster started on this machine) or "ray://HOST:PORT"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ShadowFTError(
            "resources.cluster names a Ray cluster but ray is not installed",
            hint="pip install 'shadowft[cluster]' (ray and prefect-ray), or set resources.cluster=local",
        ) from None
    return ray


def in_ray_task() -> bool:
    """True inside a Ray task (a heavy stage Ray placed); False anywhere else. A Ray worker has
    imported ray: a process that has not is no Ray task, and pays nothing for the question."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None


def here(devices: list[int] | None = None) -> dict[str, Any]:
    """Where this process runs: host, and with Ray its node and the GPUs Ray gave it."""
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    if in_ray_task():  # Ray chose the node and the GPUs
        import ray

        out["node_id"] = ray.get_runtime_context().get_node_id()
        out["ip"] = ray.util.get_node_ip_address()
        devices = [int(g) for g in ray.get_gpu_ids()]
    out["devices"] = devices or []
    return out


def record_placement(store_root: str | Path, stage: str, key: str, build_id: str, where: dict[str, Any]) -> None:
    """Append where a stage's artifact was built (one JSON line; appends of a line are atomic)."""
    line = json.dumps({"stage": stage, "key": key, "build_id": build_id, **where}) + "\n"
    with open(Path(store_root) / PLACEMENTS, "a") as f:
        f.write(line)


def placements(store_root: str | Path) -> dict[str, dict[str, Any]]:
    """build id -> where that build ran (the last record wins)."""
    path = Path(store_root) / PLACEMENTS
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for raw in path.read_text().splitlines():
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # a line cut by a crash
            out[rec.get("build_id", "")] = rec
    return out


def describe_placement(rec: dict[str, Any] | None) -> str:
    """`host (node 1a2b3c, GPUs 0,1)` for the report; "-" when unknown."""
    if not rec:
        return "-"
    node = f"node {rec['node_id'][:8]}, " if rec.get("node_id") else ""
    gpus = ",".join(map(str, rec.get("devices") or [])) or "cpu"
    return f"{rec.get('host', '?')} ({node}{'GPUs ' + gpus if gpus != 'cpu' else gpus})"


def _read_token(path: str, token: str) -> dict[str, Any]:
    """Runs on one node: can it read the token the driver wrote into the store?"""
    where = here()
    try:
        ok = Path(path).read_text() == token
        return {**where, "ok": ok, "why": "" if ok else "a different file under the same path"}
    except OSError as exc:
        return {**where, "ok": False, "why": f"{type(exc).__name__}: {exc}"}


def check_store_on_nodes(store_root: str | Path, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Before any stage: every live node of the connected Ray cluster reads a token file that this
    process writes into the store (the same path is not enough: each node could have its own empty
    copy). Raises naming each node that cannot see it. -> the nodes checked"""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root = Path(store_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = root / f".node-check-{token[:12]}"
    probe.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        remote = ray.remote(num_cpus=0)(_read_token)
        refs = {
            n["NodeID"]: remote.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
            ).remote(str(probe), token)
            for n in nodes
        }
        seen: dict[str, dict[str, Any]] = {}
        for nid, ref in refs.items():
            try:
                seen[nid] = ray.get(ref, timeout=timeout_s)
            except (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError):
                pass  # listed alive, died since (Ray marks a killed node dead only after missed heartbeats)
    finally:
        probe.unlink(missing_ok=True)
    nodes = [n for n in nodes if n["NodeID"] in seen]  # a lost node takes no work: nothing to check
    bad = [
        f"{n['NodeManagerAddress']} (node {n['NodeID'][:8]}, {seen[n['NodeID']].get('host')}): "
        f"{seen[n['NodeID']]['why']}"
        for n in nodes
        if not seen[n["NodeID"]]["ok"]
    ]
    if bad:
        raise ShadowFTError(
            f"the artifact store {root} is not visible from {len(bad)} Ray node(s): " + "; ".join(bad),
            hint="put the store (output.root / SHADOWFT_HOME) on storage every node mounts at the same path "
            "(NFS, a cluster file system), or take those nodes out of the cluster",
        )
    return [seen[n["NodeID"]] for n in nodes]
