"""Benchmark: the embedded toy family's two fast paths, the speed promises tests/test_zoo.py used to time.

  install  `build_family` of the default family into an empty dir: a copy of the files shipped in the
           package, every checksum verified (target: at most 20 s; the demo's cold start pays it)
  cached   `build_family` on a dir that already holds that family: it is returned as it is, neither
           copied nor trained (target: at most 2 s)

The tests check what these paths do (a copy, not a training run; nothing touched when cached); this
script measures how long they take, in rounds, each install into a fresh dir. Prints a table (median
and min-max per path, the load average before the run) and writes JSON with every round.
Usage: python benchmarks/zoo.py [--rounds 5] [--json benchmarks/results/zoo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

TARGETS_S = {"install": 20.0, "cached": 2.0}


def rounds(n: int, work: Path) -> dict[str, list[float]]:
    from shadowft.zoo.build import build_family

    times: dict[str, list[float]] = {"install": [], "cached": []}
    for i in range(n):
        out = work / f"family-{i}"
        t = time.perf_counter()
        build_family(out, seed=0, progress=False)
        times["install"].append(time.perf_counter() - t)
        t = time.perf_counter()
        build_family(out, seed=0, progress=False)
        times["cached"].append(time.perf_counter() - t)
        shutil.rmtree(out)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "zoo.json")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="shadowft-bench-zoo-") as tmp:
        times = rounds(args.rounds, Path(tmp))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"toy family fast paths ({os.cpu_count()} CPUs, load {load:.1f}, {args.rounds} rounds)")
    for col in ("path", "median s", "min-max s", "target s", "met"):
        table.add_column(col, justify="right")
    summary = {}
    for path, ts in times.items():
        med = statistics.median(ts)
        summary[path] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "target_s": TARGETS_S[path]}
        table.add_row(
            path, f"{med:.3f}", f"{min(ts):.3f}-{max(ts):.3f}", f"{TARGETS_S[path]:.0f}", str(med <= TARGETS_S[path])
        )
    Console().print(table)
    record = {
        "summary": summary,
        "rounds": times,
        "load_average_before": load,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
