"""Inputs of experiment v3 (docs/RESULTS.md, "Experiment v3: what does the graft carry?").

    python experiments/v3.py            # builds what is missing under runs/v3/, then prints the commands

- two Instruct variants of the embedded Base, post-trained less than the shipped Instruct
  (sigma(Base, Instruct) about 0.01 and 0.02; the shipped one is 0.044), by
  `shadowft.zoo.build.build_instruct_variant`: the same chat samples, fewer steps and a smaller rate;
- `math.jsonl`: 2000 toy-math conversations in Instruct's own answer style (none of them an eval
  question), the "more of a skill Instruct half-knows" data of part 2.

The compare configs are examples/compare-v3-*.yaml; every stage is cached in the store, so a rerun
of a finished part is all cache hits.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "v3"
#: name -> (post-training steps, peak learning rate); the shipped Instruct is 600 steps at 5e-4
VARIANTS = {"instruct-150-1e-4": (150, 1e-4), "instruct-150-5e-4": (150, 5e-4)}
MATH_SAMPLES = 2000


def main() -> None:
    from shadowft.zoo import build_family, corpus
    from shadowft.zoo.build import TrainSpec, build_instruct_variant

    family = build_family(progress=False)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (steps, lr) in VARIANTS.items():
        if not (OUT / name / "variant.json").exists():
            m = build_instruct_variant(family, OUT / name, TrainSpec(steps=steps, lr=lr, warmup=20))
            print(f"{name}: sigma(Base, Instruct) {m['sigma_to_base']:.4f} in {m['seconds']} s")
        else:
            m = json.loads((OUT / name / "variant.json").read_text())
            print(f"{name}: sigma(Base, Instruct) {m['sigma_to_base']:.4f} (built before)")
    math_file = OUT / "math.jsonl"
    if not math_file.exists():
        rows = corpus.sft_samples(random.Random("v3:math"), MATH_SAMPLES, corpus.eval_questions(), {"math": 1.0})
        corpus.write_jsonl(math_file, ({"messages": m} for m in rows))
    print(f"{math_file}: {sum(1 for _ in math_file.open())} conversations")
    print("then: shadowft compare examples/compare-v3-<part>.yaml --threads 1 --out docs/results/v3/<part>")


if __name__ == "__main__":
    sys.exit(main())
