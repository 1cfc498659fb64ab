"""Benchmark: shadowft's streaming graft vs the I/O limit vs mergekit's task_arithmetic.

Builds a Base / Instruct / tuned-Base trio of Llama shape (default about 1.3B parameters, bf16,
sharded), then runs the jobs in alternating rounds (io-limit, shadowft, shadowft-cmd, mergekit,
io-limit, ...), each in its own process while sampling its memory, right after re-reading the
inputs (every job, mergekit's included, starts from the same warm page cache):

  io-limit      read the three inputs and write one output of the same bytes, no arithmetic
  shadowft      shadowft.graft.graft(instruct, base=..., tuned=..., scope="all") in a Python process
  shadowft-cmd  `shadowft graft --instruct I --base B --tuned T --out O --scope all`, the command a
                user types (the venv's console script: interpreter start, imports, the CLI's own
                work, the graft with its pair check, exit)
  mergekit      mergekit-yaml task_arithmetic: base = Base, models = Instruct and tuned Base
                (weight 1 each), normalize false, float32 arithmetic, bf16 output

All jobs compute the same thing (I + T - B over every tensor). Two comparisons come out of it:
in-process (the graft call's own seconds against the I/O limit's, both timed inside their
process) and as a user runs it (the command's wall time against mergekit-yaml's). Where the
command's extra seconds go is measured in every round: interpreter start (`python -c pass`), the
imports the graft command makes (timed in a process of their own), the graft (its report, which
includes the pair check, timed alone in the shadowft job) and the rest (the CLI, exit).
Reports the median of each figure with its spread (min-max over the rounds) and the load average
before each job, prints tables and writes JSON with every round.
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
from shadowft.graft.provenance import PROVENANCE_NAME  # noqa: E402


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
import sys, os, time
from pathlib import Path
t0 = time.perf_counter()
inst, base, tuned, out = map(Path, sys.argv[1:5])
buf = bytearray(1 << 20)  # 1 MB: with 64 MB buffers (beyond the caches) the copy took 2-5x longer on this VM
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
print("IO", time.perf_counter() - t0)
"""

GRAFT_SCRIPT = r"""
import sys, time
t_imp = time.perf_counter()
from shadowft.checkpoint import Checkpoint
from shadowft.graft import graft
from shadowft.graft.engine import one_compute_thread
from shadowft.graft.sources import PairSource
from shadowft.pair import PairOptions
t_imp = time.perf_counter() - t_imp
inst, base, tuned, out = sys.argv[1:5]
r = graft(inst, out, base=base, tuned=tuned, scope="all", max_shard_size="1GB")
# the check the graft ran first (structure + sampled sigma), timed alone on the same inputs, as the graft runs it
t0 = time.perf_counter()
with Checkpoint(inst, role="instruct") as ci, one_compute_thread():
    src = PairSource(base, tuned)
    check = src.check_pair(ci, "all", PairOptions())
    src.close()
print("GRAFT", r.seconds, time.perf_counter() - t0, check.sigma, t_imp)
"""

# What `shadowft graft` imports before it reads a byte (the CLI, then the modules the command
# function imports), timed in a process of its own; interpreter start is timed apart (`-c pass`).
CMD_IMPORTS_SCRIPT = r"""
import time
t0 = time.perf_counter()
import shadowft.cli
import shadowft.graft
import shadowft.graft.methods.per_module
import shadowft.pair
print("IMPORTS", time.perf_counter() - t0)
"""


def tagged(run: dict, tag: str) -> list[float]:
    """The numbers a job printed on its line starting with `tag`."""
    line = next(x for x in run["log_tail"].splitlines() if x.startswith(tag + " "))
    return [float(v) for v in line.split()[1:]]


def pair_check_share(runs: list[dict]) -> dict:
    """The graft's own pair check (structure + sampled sigma; timed alone in the shadowft job, right
    after the graft that ran it): its seconds per round and its share of the graft's in-process seconds."""
    checks, grafts = [], []
    for r in runs:
        g, c = tagged(r, "GRAFT")[:2]
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


def spread(values: list[float]) -> dict:
    """Median and min-max of one figure over the rounds, with every round's value."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


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
        "loadavg_before_all": [r["loadavg_before"] for r in runs],
    }


def command_breakdown(runs: dict[str, list[dict]], startup: list[float], imports: list[float]) -> dict:
    """Where the command's seconds go, per round: interpreter start, the graft command's imports,
    the graft as its report times it (pair check included; the check timed alone in the shadowft
    job of the same round), and the rest (the CLI's own work, exit)."""
    cmd = [r["wall_s"] for r in runs["shadowft-cmd"]]
    graft = [r["graft_s"] for r in runs["shadowft-cmd"]]
    check = [tagged(r, "GRAFT")[1] for r in runs["shadowft"]]
    rest = [c - s - i - g for c, s, i, g in zip(cmd, startup, imports, graft)]
    return {
        "command_s": spread(cmd),
        "startup_s": spread(startup),
        "imports_s": spread(imports),
        "graft_s": spread(graft),
        "pair_check_s": spread(check),
        "rest_s": spread(rest),
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

    outs = {k: work / f"out-{k}" for k in ("io-limit", "shadowft", "shadowft-cmd", "mergekit")}
    args_io = [str(paths["instruct"]), str(paths["base"]), str(paths["tuned"])]
    shadowft_bin = shutil.which("shadowft") or str(Path(sys.executable).parent / "shadowft")
    jobs = {
        "io-limit": [sys.executable, "-c", IO_LIMIT_SCRIPT, *args_io, str(outs["io-limit"])],
        "shadowft": [sys.executable, "-c", GRAFT_SCRIPT, *args_io, str(outs["shadowft"])],
        "shadowft-cmd": [
            shadowft_bin, "graft", "--instruct", str(paths["instruct"]), "--base", str(paths["base"]),
            "--tuned", str(paths["tuned"]), "--out", str(outs["shadowft-cmd"]), "--scope", "all",
            "--max-shard-size", "1GB",
        ],
    }  # fmt: skip
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
    startup: list[float] = []
    imports: list[float] = []
    for r in range(args.rounds):
        for name, cmd in jobs.items():
            shutil.rmtree(outs[name], ignore_errors=True)
            warm()
            load = os.getloadavg()[0]
            runs[name].append(run_measured(cmd))
            runs[name][-1]["loadavg_before"] = load
            if name == "shadowft-cmd":  # the graft's own seconds, from the report in its provenance
                prov = json.loads((outs[name] / PROVENANCE_NAME).read_text())
                runs[name][-1]["graft_s"] = prov["seconds"]
                # the command's fixed costs, right after it (they read no model file)
                startup.append(run_measured([sys.executable, "-c", "pass"])["wall_s"])
                imports.append(tagged(run_measured([sys.executable, "-c", CMD_IMPORTS_SCRIPT]), "IMPORTS")[0])
            print(f"round {r + 1}/{args.rounds} {name}: {runs[name][-1]['wall_s']:.2f} s (load {load:.2f})", flush=True)
            if name in ("io-limit", "shadowft-cmd") or r < args.rounds - 1:
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
    # in-process: the graft call against the I/O limit's reads and writes, both timed inside their process
    io_in = [tagged(x, "IO")[0] for x in runs["io-limit"]]
    graft_in = [tagged(x, "GRAFT")[0] for x in runs["shadowft"]]
    in_process = {
        "io_limit_s": spread(io_in),
        "graft_s": spread(graft_in),
        "graft_imports_s": spread([tagged(x, "GRAFT")[3] for x in runs["shadowft"]]),
        "fraction_of_io_limit": statistics.median(io_in) / statistics.median(graft_in),
        "fraction_of_io_limit_per_round": [i / g for i, g in zip(io_in, graft_in)],
    }
    breakdown = command_breakdown(runs, startup, imports)
    command = {"breakdown": breakdown}
    if "mergekit" in results:
        per_round = [m["wall_s"] / c["wall_s"] for m, c in zip(runs["mergekit"], runs["shadowft-cmd"])]
        command["speedup_vs_mergekit"] = results["mergekit"]["wall_s"] / results["shadowft-cmd"]["wall_s"]
        command["speedup_vs_mergekit_per_round"] = per_round

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
    console = Console(width=160)
    console.print(table)
    inp = in_process
    console.print(
        f"in-process (timed inside each process): graft {inp['graft_s']['median']:.2f} s "
        f"({inp['graft_s']['min']:.2f}-{inp['graft_s']['max']:.2f}), I/O limit {inp['io_limit_s']['median']:.2f} s "
        f"({inp['io_limit_s']['min']:.2f}-{inp['io_limit_s']['max']:.2f}): {inp['fraction_of_io_limit']:.2f} of the I/O limit "
        f"(per round {', '.join(f'{x:.2f}' for x in inp['fraction_of_io_limit_per_round'])})",
        highlight=False,
    )
    parts = Table(title="the `shadowft graft` command: where its seconds go (median, min-max over the rounds)")
    for col in ("part", "median s", "min-max s"):
        parts.add_column(col, justify="right")
    labels = {
        "command_s": "command (wall)",
        "startup_s": "interpreter start",
        "imports_s": "imports",
        "graft_s": "graft (its report)",
        "pair_check_s": "  of which pair check",
        "rest_s": "rest (CLI, exit)",
    }
    for key, label in labels.items():
        b = breakdown[key]
        parts.add_row(label, f"{b['median']:.2f}", f"{b['min']:.2f}-{b['max']:.2f}")
    console.print(parts)
    if "speedup_vs_mergekit" in command:
        pr = command["speedup_vs_mergekit_per_round"]
        console.print(
            f"through the command: {command['speedup_vs_mergekit']:.2f}x mergekit-yaml "
            f"(per round {', '.join(f'{x:.2f}' for x in pr)})",
            highlight=False,
        )
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
        "in_process": in_process,
        "command": command,
        "runs": {name: [{k: v for k, v in r.items() if k != "log_tail"} for r in rs] for name, rs in runs.items()},
        "command_fixed_costs": {"startup_s_all": startup, "imports_s_all": imports},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    for o in outs.values():
        shutil.rmtree(o, ignore_errors=True)


if __name__ == "__main__":
    main()
