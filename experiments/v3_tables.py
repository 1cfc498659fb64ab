"""Experiment v3's decision-rule figures, read from the comparisons' summary.json (docs/RESULTS.md).

    python experiments/v3_tables.py docs/results/v3/math --suites toy-math toy-coding toy-reasoning
    python experiments/v3_tables.py docs/results/v3/sigma-0.009 docs/results/v3/sigma-0.024 ... --carried toy-domain

Per model: the mean over the given suites per seed, then mean ± std and standard error over seeds,
against Instruct (one evaluation); the paired alpha auto minus alpha 1; and the carried share of a
suite with its standard error (the rules written in the design: beyond 2 standard errors).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _stats(xs: list[float]) -> tuple[float, float, float]:
    """Mean, std and standard error over seeds, by the comparison's own `mean_std`."""
    from shadowft.compare import mean_std

    m, sd = mean_std(xs)
    assert m is not None, "no scores"
    sd = sd or 0.0  # one seed: no spread
    return m, sd, sd / math.sqrt(len(xs))


def _verdict(diff: float, se: float) -> str:
    return "beyond 2 SE" if abs(diff) > 2 * se else "not distinguished"


def per_seed_means(model: dict, suites: list[str]) -> dict[str, float]:
    seeds = model["per_seed"]
    return {s: sum(v[x] for x in suites) / len(suites) for s, v in seeds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--suites", nargs="+", default=["toy-math", "toy-coding", "toy-reasoning"])
    ap.add_argument("--carried", default=None, help="a suite: print its carried share per model")
    args = ap.parse_args()
    for d in args.dirs:
        s = json.loads((d / "summary.json").read_text())
        models = s["models"]
        inst = models["instruct"]["per_seed"]
        inst_scores = next(iter(inst.values()))
        inst_mean = sum(inst_scores[x] for x in args.suites) / len(args.suites)
        print(f"## {d}: mean of {', '.join(args.suites)}; Instruct {100 * inst_mean:.1f}")
        for name, m in models.items():
            if name in ("instruct", "base") or not m.get("per_seed"):
                continue
            ms = per_seed_means(m, args.suites)
            mean, sd, se = _stats(list(ms.values()))
            line = f"{name:22s} {100 * mean:5.1f} ± {100 * sd:.1f} (vs Instruct {100 * (mean - inst_mean):+.1f}, SE {100 * se:.1f}: {_verdict(mean - inst_mean, se)})"
            for suite in args.suites[:1]:
                xs = [v[suite] for v in m["per_seed"].values()]
                sm, ssd, sse = _stats(xs)
                line += f"; {suite} {100 * sm:.1f} ± {100 * ssd:.1f} ({100 * (sm - inst_scores[suite]):+.1f}: {_verdict(sm - inst_scores[suite], sse)})"
            print(line)
        for name in models:
            if name.endswith(" a=auto"):
                one = name.replace(" a=auto", "")
                a, b = per_seed_means(models[name], args.suites), per_seed_means(models[one], args.suites)
                mean, sd, se = _stats([a[k] - b[k] for k in a])
                print(
                    f"{name} minus {one}: {100 * mean:+.1f} ± {100 * sd:.1f} (SE {100 * se:.1f}: {_verdict(mean, se)})"
                )
        if args.carried:
            for name, c in s.get("carried", {}).items():
                cell = c.get(args.carried)
                if not cell:
                    continue
                xs = list(cell["per_seed"].values())
                mean, sd, se = _stats(xs)
                gain = cell["gain"]
                print(
                    f"carried {args.carried} {name}: {100 * mean:+.0f} ± {100 * sd:.0f} % (SE {100 * se:.0f}: "
                    f"{'carries' if mean > 2 * se else 'does not carry'}); tuned Base gain {100 * gain['mean']:+.1f} "
                    f"± SE {100 * gain['se']:.1f}; shown {cell['shown']}"
                )


if __name__ == "__main__":
    main()
