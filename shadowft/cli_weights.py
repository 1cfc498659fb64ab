"""CLI commands for weight surgery: similarity, check-pair, delta, graft, convert (registered in
`shadowft.cli.COMMANDS`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from shadowft.console import console, err_console

#: Set when a weight-surgery command (graft, delta) starts. When it ends, its output is published and
#: its files closed, so the console script ends the process without Python's teardown of the modules
#: torch loads (`shadowft.cli.main`), which took 0.7-1.7 s on a 2-core machine after a 1.3B graft.
QUICK_EXIT = False


def _quick_exit() -> None:
    global QUICK_EXIT
    QUICK_EXIT = True


class DeltaDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class VocabMismatch(str, Enum):
    error = "error"
    overlap = "overlap"


@contextmanager
def byte_progress(label: str, total: int, enabled: bool = True) -> Iterator:
    """A rich progress bar over bytes written; yields the callback the library calls per tensor."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda _name, nbytes: bar.advance(task, nbytes)


def _instruct_bytes(path: Path) -> int:
    from shadowft.checkpoint import Checkpoint

    with Checkpoint(path, role="instruct") as c:
        return c.total_bytes


def similarity(
    a: Annotated[Path, typer.Argument(help="First model dir (e.g. the Base model).")],
    b: Annotated[Path, typer.Argument(help="Second model dir (e.g. the Instruct model).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a table.")] = False,
    top: Annotated[int, typer.Option(help="Rows of the per-tensor table (largest sigma first).")] = 10,
) -> None:
    """The paper's sigma(A, B) = sum|A-B| / (sum|A| + sum|B|) per tensor, summarised over layers."""
    from shadowft.modality import checkpoint_parts
    from shadowft.pair import similarity as compute

    report = compute(a, b, parts=checkpoint_parts(b))  # a VLM: per part, the language model's as the summary
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title=f"sigma({a.name}, {b.name}) over {report.n_summarised} layer tensors")
    for col in ("mean", "median", "max", "min"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{getattr(report, c):.5f}" for c in ("mean", "median", "max", "min")))
    console.print(table)
    _print_parts(report.by_role)
    worst = Table(title=f"top {top} tensors by sigma")
    worst.add_column("tensor")
    worst.add_column("sigma", justify="right")
    for name, v in sorted(report.tensors.items(), key=lambda kv: -kv[1])[:top]:
        worst.add_row(name, f"{v:.5f}")
    console.print(worst)


def _print_parts(by_role: dict[str, float]) -> None:
    """A vision-language pair's sigma per part (the summary above is the language model's)."""
    if by_role:
        console.print("sigma by part: " + "  ".join(f"{role} {v:.4f}" for role, v in by_role.items()))


def check_pair(
    base: Annotated[Path, typer.Option(help="Base model dir.")],
    instruct: Annotated[Path, typer.Option(help="Instruct model dir.")],
    scope: Annotated[str, typer.Option(help="Graft scope: projections | all | REGEX.")] = "projections",
    max_sigma: Annotated[float, typer.Option(help="Refuse pairs whose mean sigma is above this.")] = 0.15,
    force: Annotated[bool, typer.Option(help="Accept a pair above --max-sigma.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check that Base and Instruct form a graftable pair (structure, vocab, tied embeddings, sigma)."""
    from shadowft.pair import check_pair as run_check

    report = run_check(base, instruct, scope=scope, max_sigma=max_sigma, force=force)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    s = report.sigma
    console.print(f"[green]ok[/]: {base} and {instruct} form a graftable pair")
    if s is not None:
        console.print(f"sigma mean {s.mean:.4f}  median {s.median:.4f}  max {s.max:.4f}  min {s.min:.4f}")
        _print_parts(s.by_role)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")


def delta(
    base: Annotated[Path, typer.Option(help="Base model dir (before tuning).")],
    tuned: Annotated[Path, typer.Option(help="The tuned Base model dir.")],
    out: Annotated[Path, typer.Option(help="Output dir for the delta safetensors.")],
    dtype: Annotated[DeltaDtype, typer.Option(help="Storage dtype of the delta.")] = DeltaDtype.float32,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB.")] = "5GB",
    overwrite: Annotated[
        bool, typer.Option(help="Replace --out when it holds an earlier shadowft output (its provenance file).")
    ] = False,
) -> None:
    """Extract delta = tuned - base (float32 arithmetic) as a safetensors dir with provenance."""
    _quick_exit()
    from shadowft.graft import extract_delta

    with byte_progress("delta", _instruct_bytes(tuned) * (2 if dtype == DeltaDtype.float32 else 1)) as cb:
        report = extract_delta(
            base, tuned, out, dtype=dtype.value, max_shard_size=max_shard_size, overwrite=overwrite, progress=cb
        )
    console.print(
        f"[green]wrote[/] {report.tensors} tensors ({report.bytes_written / 1e6:.1f} MB, {report.dtype}) to {out} in {report.seconds:.1f}s"
    )


def parse_params(texts: list[str]) -> dict[str, object]:
    """A graft method's settings from ``--param KEY=VALUE`` (split at the first ``=``, VALUE read as
    YAML: ``density=0.5``, ``seed=3``, ``alpha_by_module={mlp: 0.5}``); checked by the method."""
    import yaml

    from shadowft.errors import ShadowFTError

    out: dict[str, object] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ShadowFTError(f"cannot read --param {text!r}", hint="write KEY=VALUE, e.g. --param density=0.5")
        try:
            out[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as exc:
            raise ShadowFTError(f"--param {key}: cannot read the value {value!r} ({exc.__class__.__name__})") from None
    return out


def graft(
    instruct: Annotated[Path, typer.Option(help="Instruct model dir to graft onto.")],
    out: Annotated[Path, typer.Option(help="Output model dir (written atomically).")],
    delta: Annotated[Optional[Path], typer.Option(help="A delta dir from `shadowft delta`.")] = None,
    base: Annotated[
        Optional[Path], typer.Option(help="Base model dir: with --tuned; or with --delta, to check sigma.")
    ] = None,
    tuned: Annotated[Optional[Path], typer.Option(help="Tuned Base model dir (with --base).")] = None,
    adapter: Annotated[Optional[Path], typer.Option(help="A PEFT LoRA adapter trained on Base.")] = None,
    alpha: Annotated[float, typer.Option(help="Scale of the update: W_I + alpha * delta.")] = 1.0,
    scope: Annotated[
        str, typer.Option(help="Tensors to graft: projections (paper default) | all | REGEX.")
    ] = "projections",
    method: Annotated[
        Optional[str],
        typer.Option(
            help="Graft method by name (default linear; per_module with --alpha-by-module); an unknown name "
            "lists the registered ones (linear, per_module, dare, ties, ...)."
        ),
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option(
            metavar="KEY=VALUE",
            help="A setting of the --method, KEY=VALUE (VALUE read as YAML), repeatable; e.g. --method dare "
            "--param density=0.5 --param seed=1. The settings of each method: README, 'Graft methods'.",
        ),
    ] = None,
    alpha_by_module: Annotated[
        Optional[list[str]],
        typer.Option(
            metavar="REGEX=ALPHA",
            help="Per-module alpha, REGEX=ALPHA, repeatable (short for --method per_module --param "
            "alpha_by_module=...): the first regex found in a tensor name gives its alpha, others use --alpha. "
            "E.g. --alpha-by-module 'q_proj|k_proj|v_proj|o_proj=0.5' --alpha-by-module 'mlp=1.0'.",
        ),
    ] = None,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB.")] = "5GB",
    vocab_mismatch: Annotated[
        VocabMismatch, typer.Option(help="Rows of embeddings differ: error, or graft the shared rows.")
    ] = VocabMismatch.error,
    as_adapter: Annotated[
        bool, typer.Option(help="With --adapter: write an adapter whose base is Instruct instead of merging.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace --out when it holds an earlier shadowft output (its provenance file).")
    ] = False,
    max_sigma: Annotated[
        float, typer.Option(help="Refuse when sigma(the update's Base, Instruct) is above this (real pairs < 0.06).")
    ] = 0.15,
    force: Annotated[bool, typer.Option(help="Graft even when sigma is above --max-sigma (with a warning).")] = False,
) -> None:
    """Graft the Base model's update onto Instruct: W_I + alpha * (W_tuned - W_base), or a LoRA adapter.

    Before writing, the update's Base is checked against Instruct: structure always (a delta records
    its Base's), sigma when the Base weights are at hand (--base; a delta's recorded Base dir; a LoRA
    adapter's base_model_name_or_path when it is a local dir). To re-graft onto a new Instruct
    release of the same Base, pass the stored --delta or --adapter with the new --instruct.
    """
    _quick_exit()
    from shadowft.errors import ShadowFTError
    from shadowft.graft import graft as run_graft
    from shadowft.graft import retarget_adapter
    from shadowft.graft.methods.per_module import PerModule, parse_alpha_rules
    from shadowft.graft.registry import resolve_method_name
    from shadowft.pair import PairOptions

    settings = parse_params(param or [])
    if param and method is None:
        raise ShadowFTError(
            "--param sets a graft method's settings: name the method", hint="e.g. --method dare --param density=0.5"
        )
    if alpha_by_module:
        if "alpha_by_module" in settings:
            raise ShadowFTError("give the per-module alphas once: --alpha-by-module or --param alpha_by_module=...")
        settings["alpha_by_module"] = parse_alpha_rules(alpha_by_module)
    method = resolve_method_name(method, [PerModule.name] if alpha_by_module else [])
    if as_adapter:
        if settings or method != "linear":
            raise ShadowFTError(
                "--as-adapter scales the whole adapter by --alpha",
                hint="drop --method / --param / --alpha-by-module, or merge instead",
            )
        if adapter is None:
            raise ShadowFTError("--as-adapter needs --adapter", hint="pass the LoRA adapter trained on Base")
        retarget_adapter(
            adapter, instruct, out, alpha=alpha, overwrite=overwrite, pair_options=PairOptions(max_sigma, force)
        )
        console.print(f"[green]wrote[/] adapter for {instruct} to {out}")
        return
    with byte_progress("graft", _instruct_bytes(instruct)) as cb:
        report = run_graft(
            instruct,
            out,
            delta=delta,
            base=base,
            tuned=tuned,
            adapter=adapter,
            alpha=alpha,
            scope=scope,
            method=method,
            settings=settings,
            max_shard_size=max_shard_size,
            vocab_mismatch=vocab_mismatch.value,
            overwrite=overwrite,
            progress=cb,
            pair_options=PairOptions(max_sigma, force),
        )
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(
        f"[green]grafted[/] {report.grafted} tensors ({report.method}, {report.graft_method}, alpha {report.alpha}, scope {report.scope}), "
        f"copied {report.copied}; {report.bytes_written / 1e6:.1f} MB to {out} in {report.seconds:.1f}s"
    )


def convert(
    src: Annotated[Path, typer.Argument(help="Model dir with pickled pytorch_model*.bin weights.")],
    out: Annotated[Path, typer.Argument(help="Output model dir with safetensors weights.")],
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 5GB.")] = "5GB",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty OUT.")] = False,
) -> None:
    """Convert pickled .bin weights to safetensors, loading with torch.load(weights_only=True)."""
    from shadowft.convert import convert_pickled_to_safetensors

    n = convert_pickled_to_safetensors(src, out, max_shard_size=max_shard_size, overwrite=overwrite)
    console.print(f"[green]wrote[/] {n} tensors as safetensors to {out}")
