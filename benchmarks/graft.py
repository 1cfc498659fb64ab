"""Benchmark: shadowft's streaming graft vs the I/O limit vs mergekit's task_arithmetic.

Builds a Base / Instruct / tuned-Base trio of Llama shape (default about 1.3B parameters, bf16,
sharded), then runs the jobs in alternating rounds (io-limit, shadowft, mergekit, io-limit, ...),
each in its own process while sampling its memory, right after re-reading the inputs:

  io-limit   read the three inputs and write one output of the same bytes, no arithmetic
  shadowft   shadowft.graft.graft(instruct, base=..., tuned=..., scope="all")
  mergekit   mergekit-yaml task_arithmetic: base = Base, models = Instruct and tuned Base
             (weight 1 each), normalize false, float32 arithmetic, bf16 output

All three jobs compute the same thing (I + T - B over every tensor). Reports the median wall time
of each job with its spread (min-max over the rounds), prints a table and writes JSON.
Usage: python benchmarks/graft.py [--params 1.3e9] [--rounds 3] [--workdir DIR] [--skip-mergekit]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from shadowft.checkpoint import Checkpoint, OutTensor, ShardedWriter  # noqa: E402


def llama_shape(params: float) -> dict:
    """A Llama config of roughly `params` parameters (hidden 2048, vocab 32000; layers vary)."""
    hidden, inter, vocab = 2048, 5504, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    }


def tensor_plan(cfg: dict) -> list[OutTensor]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    plan = [OutTensor("model.embed_tokens.weight", torch.bfloat16, (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        plan += [
            OutTensor(p + "input_layernorm.weight", torch.bfloat16, (h,)),
            OutTensor(p + "self_attn.q_proj.weight", torch.bfloat16, (h, h)),
            OutTensor(p + "self_attn.k_proj.weight", torch.bfloat16, (h, h)),
            OutTensor(p + "self_attn.v_proj.weight", torch.bfloat16, (h, h)),
            OutTensor(p + "self_attn.o_proj.weight", torch.bfloat16, (h, h)),
            OutTensor(p + "post_attention_layernorm.weight", torch.bfloat16, (h,)),
            OutTensor(p + "mlp.gate_proj.weight", torch.bfloat16, (i, h)),
            OutTensor(p + "mlp.up_proj.weight", torch.bfloat16, (i, h)),
            OutTensor(p + "mlp.down_proj.weight", torch.bfloat16, (h, i)),
        ]
    plan += [OutTensor("model.norm.weight", torch.bfloat16, (h,)), OutTensor("lm_head.weight", torch.bfloat16, (v, h))]
    return plan


def build_trio(root: Path, params: float, shard: str) -> dict[str, Path]:
    """Write the trio directly as sharded safetensors (random bf16 weights; instruct/tuned = base + noise)."""
    cfg = llama_shape(params)
    plan = tensor_plan(cfg)
    paths = {k: root / k for k in ("base", "instruct", "tuned")}
    if all((p / "model.safetensors.index.json").exists() for p in paths.values()):
        return paths
    g = torch.Generator().manual_seed(0)
    writers = {}
    for k, p in paths.items():
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
        (p / "config.json").write_text(json.dumps(cfg, indent=2))
        writers[k] = ShardedWriter(p, plan, max_shard_size=shard)
    for i, shard_plan in enumerate(writers["base"].shards):
        ctxs = [w.open_shard(i) for w in writers.values()]
        for c in ctxs:
            c.__enter__()
        for t in shard_plan:
            n = 1
            for s in t.shape:
                n *= s
            base = torch.randn(n, generator=g) * 0.02
            writers["base"].write(t.name, base)
            writers["instruct"].write(t.name, base + torch.randn(n, generator=g) * 0.001)
            writers["tuned"].write(t.name, base + torch.randn(n, generator=g) * 0.0005)
        for c in ctxs:
            c.__exit__(None, None, None)
    for w in writers.values():
        w.write_index()
    return paths


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd`, sampling its (and its children's) RssAnon / RSS every 20 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = {"anon": 0, "rss": 0}

    def status(pid: int) -> tuple[int, int]:
        try:
            fields = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
            )
            kb = lambda k: int(fields.get(k, "0 kB").split()[0]) * 1024  # noqa: E731
            return kb("RssAnon"), kb("VmRSS")
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return 0, 0

    def sample():
        while proc.poll() is None:
            pids = [proc.pid]
            try:
                pids += [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            except (FileNotFoundError, ValueError):
                pass
            anon = rss = 0
            for pid in pids:
                a, r = status(pid)
                anon, rss = anon + a, rss + r
            peak["anon"], peak["rss"] = max(peak["anon"], anon), max(peak["rss"], rss)
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"wall_s": wall, "peak_anon_bytes": peak["anon"], "peak_rss_bytes": peak["rss"], "log_tail": out[-400:]}


IO_LIMIT_SCRIPT = r"""
import sys, os
from pathlib import Path
inst, base, tuned, out = map(Path, sys.argv[1:5])
buf = bytearray(64 << 20)
mv = memoryview(buf)
for d in (base, tuned):
    for f in sorted(d.glob("*.safetensors")):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
out.mkdir(parents=True)
for f in sorted(inst.glob("*.safetensors")):
    with open(f, "rb", buffering=0) as src, open(out / f.name, "wb", buffering=0) as dst:
        while (n := src.readinto(buf)):
            dst.write(mv[:n])
        os.fsync(dst.fileno()) if False else None
"""

GRAFT_SCRIPT = r"""
import sys, time
from shadowft.checkpoint import Checkpoint
from shadowft.graft import graft
from shadowft.graft.sources import PairSource
from shadowft.pair import PairOptions
inst, base, tuned, out = sys.argv[1:5]
r = graft(inst, out, base=base, tuned=tuned, scope="all", max_shard_size="1GB")
# the check the graft ran first (structure + sampled sigma), timed alone on the same inputs
t0 = time.perf_counter()
with Checkpoint(inst, role="instruct") as ci:
    src = PairSource(base, tuned)
    check = src.check_pair(ci, "all", PairOptions())
    src.close()
print("GRAFT", r.seconds, time.perf_counter() - t0, check.sigma)
"""


def pair_check_share(runs: list[dict]) -> dict:
    """The graft's own pair check (structure + sampled sigma; timed alone in the shadowft job, right
    after the graft that ran it): its seconds per round and its share of the graft's in-process seconds."""
    checks, grafts = [], []
    for r in runs:
        line = next(x for x in r["log_tail"].splitlines() if x.startswith("GRAFT "))
        g, c = map(float, line.split()[1:3])
        grafts.append(g)
        checks.append(c)
    shares = [c / g for c, g in zip(checks, grafts)]
    return {
        "pair_check_s": statistics.median(checks),
        "pair_check_s_all": checks,
        "graft_in_process_s_all": grafts,
        "pair_check_share_of_graft": statistics.median(shares),
        "pair_check_share_range": [min(shares), max(shares)],
    }


def summarise(runs: list[dict]) -> dict:
    """Median wall time and peak memory over the rounds, with the min-max spread of the wall time."""
    walls = [r["wall_s"] for r in runs]
    return {
        "wall_s": statistics.median(walls),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "wall_s_all": walls,
        "peak_anon_bytes": statistics.median(r["peak_anon_bytes"] for r in runs),
        "peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in runs),
    }


def mergekit_config(paths: dict[str, Path]) -> str:
    return (
        "merge_method: task_arithmetic\n"
        f"base_model: {paths['base']}\n"
        "models:\n"
        f"  - model: {paths['instruct']}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {paths['tuned']}\n    parameters: {{weight: 1.0}}\n"
        "parameters: {normalize: false}\n"
        "dtype: float32\n"
        "out_dtype: bfloat16\n"
    )


def compare_outputs(a: Path, b: Path, limit: int = 6) -> float:
    """Largest absolute difference between two outputs over a few tensors (sanity check)."""
    ca, cb = Checkpoint(a), Checkpoint(b)
    worst = 0.0
    for name in list(ca.tensors)[:limit]:
        if name in cb.tensors:
            worst = max(worst, (ca.tensor(name).float() - cb.tensor(name).float()).abs().max().item())
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1.3e9, help="approximate parameter count of each model")
    ap.add_argument("--shard", default="1GB", help="shard size of the trio")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build the trio (kept for reuse)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of alternating jobs; medians are reported")
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "results" / "graft.json")
    args = ap.parse_args()

    work = (
        args.workdir or Path(tempfile.gettempdir()) / f"shadowft-bench-{args.params / 1e9:g}B"
    )  # no "+": mergekit reads it as a LoRA
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    paths = build_trio(work, args.params, args.shard)
    build_s = time.perf_counter() - t0
    with Checkpoint(paths["instruct"]) as c:
        model_bytes, n_params = c.total_bytes, sum(t.numel for t in c.tensors.values())
    moved = 4 * model_bytes  # three read, one written

    outs = {k: work / f"out-{k}" for k in ("io-limit", "shadowft", "mergekit")}
    args_io = [str(paths["instruct"]), str(paths["base"]), str(paths["tuned"])]
    jobs = {
        "io-limit": [sys.executable, "-c", IO_LIMIT_SCRIPT, *args_io, str(outs["io-limit"])],
        "shadowft": [sys.executable, "-c", GRAFT_SCRIPT, *args_io, str(outs["shadowft"])],
    }
    if not args.skip_mergekit:
        cfg = work / "mergekit.yml"
        cfg.write_text(mergekit_config(paths))
        mk = shutil.which("mergekit-yaml") or str(Path(sys.executable).parent / "mergekit-yaml")
        jobs["mergekit"] = [mk, str(cfg), str(outs["mergekit"]), "--out-shard-size", "1B"]

    def warm() -> None:
        """Read the inputs right before each job, so that every job starts from the page cache
        (this VM reclaims cached file pages quickly; without it the later jobs read from disk)."""
        run_measured([sys.executable, "-c", IO_LIMIT_SCRIPT, *args_io, str(work / "warm")])
        shutil.rmtree(work / "warm", ignore_errors=True)

    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    for r in range(args.rounds):
        for name, cmd in jobs.items():
            shutil.rmtree(outs[name], ignore_errors=True)
            warm()
            runs[name].append(run_measured(cmd))
            print(f"round {r + 1}/{args.rounds} {name}: {runs[name][-1]['wall_s']:.2f} s", flush=True)
            if name == "io-limit" or r < args.rounds - 1:
                shutil.rmtree(outs[name], ignore_errors=True)
    max_diff = compare_outputs(outs["shadowft"], outs["mergekit"]) if "mergekit" in jobs else None

    results = {name: summarise(rs) for name, rs in runs.items()}
    io = results["io-limit"]["wall_s"]
    for name, res in results.items():
        res["gb_per_s"] = moved / res["wall_s"] / 1e9
        res["fraction_of_io_limit"] = io / res["wall_s"]
        if "mergekit" in results:
            res["speedup_vs_mergekit"] = results["mergekit"]["wall_s"] / res["wall_s"]
            # per round (same conditions): how far the ratio moved with the machine's noise
            per_round = [m["wall_s"] / x["wall_s"] for m, x in zip(runs["mergekit"], runs[name])]
            res["speedup_vs_mergekit_range"] = [min(per_round), max(per_round)]
    if max_diff is not None:
        results["mergekit"]["max_abs_diff_vs_shadowft"] = max_diff
    results["shadowft"].update(pair_check_share(runs["shadowft"]))

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"graft of a {n_params / 1e9:.2f}B-parameter bf16 trio ({model_bytes / 1e9:.2f} GB per model), "
        f"{os.cpu_count()} CPUs, median of {args.rounds} rounds (min-max)"
    )
    for col in ("job", "wall s", "min-max s", "GB/s", "peak anon MB", "peak RSS MB", "x I/O limit", "x mergekit"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        rng = r.get("speedup_vs_mergekit_range")
        table.add_row(
            name,
            f"{r['wall_s']:.2f}",
            f"{r['wall_s_min']:.2f}-{r['wall_s_max']:.2f}",
            f"{r['gb_per_s']:.2f}",
            f"{r['peak_anon_bytes'] / 1e6:.0f}",
            f"{r['peak_rss_bytes'] / 1e6:.0f}",
            f"{r['fraction_of_io_limit']:.2f}",
            f"{r['speedup_vs_mergekit']:.2f} ({rng[0]:.2f}-{rng[1]:.2f})" if rng else "-",
        )
    Console(width=160).print(table)
    sh = results["shadowft"]
    print(
        f"pair check inside the graft (structure + sigma sampled): {sh['pair_check_s']:.3f} s, "
        f"{100 * sh['pair_check_share_of_graft']:.1f}% of the graft's in-process time "
        f"({100 * sh['pair_check_share_range'][0]:.1f}-{100 * sh['pair_check_share_range'][1]:.1f}%)"
    )
    print(
        f"load average before {load_before[0]:.2f}, at the end {os.getloadavg()[0]:.2f} "
        "(a busy machine slows the compute-heavy jobs most)"
    )
    record = {
        "params": n_params,
        "model_bytes": model_bytes,
        "bytes_moved": moved,
        "build_s": build_s,
        "rounds": args.rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "loadavg_before": load_before,
            "loadavg_at_end": os.getloadavg(),
        },
        "results": results,
        "runs": {name: [{k: v for k, v in r.items() if k != "log_tail"} for r in rs] for name, rs in runs.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    for o in outs.values():
        shutil.rmtree(o, ignore_errors=True)


if __name__ == "__main__":
    main()
