"""`resources.cluster: auto` with no Ray cluster to find. A module of its own: Ray's "auto" also finds a
cluster by its running processes, and `tests/test_cluster.py` keeps one up for its whole module."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import psutil
import pytest

pytest.importorskip("ray", reason="the cluster extra: pip install 'shadowft[cluster]'")
pytest.importorskip("prefect_ray", reason="the cluster extra: pip install 'shadowft[cluster]'")


def test_auto_without_a_ray_cluster_is_refused_not_started():
    """prefect-ray calls a bare `ray.init()` for "auto", which starts a private local Ray when no
    cluster is found: the run would look distributed and run on this machine alone. Refused instead."""
    script = (
        "from shadowft.config import ResourcesConfig\n"
        "from tasks._cluster import task_runner_for\n"
        "with task_runner_for(ResourcesConfig(cluster='auto')):\n"
        "    print('STARTED')\n"
    )
    running = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"]
    assert not running, f"a Ray cluster runs on this machine (gcs_server {running}): auto would find it"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # no cluster to find: none in RAY_ADDRESS, none recorded under Ray's temp dir
    # (a short path: Ray's sockets under it must stay within AF_UNIX's 107 bytes)
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_tmp:
        env |= {"RAY_TMPDIR": ray_tmp, "PREFECT_API_URL": "http://127.0.0.1:9/api", "RAY_USAGE_STATS_ENABLED": "0"}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "STARTED" not in out.stdout, out.stdout
    assert "ConnectionError" in out.stderr and "Could not find any running Ray instance" in out.stderr, out.stderr[
        -2000:
    ]
