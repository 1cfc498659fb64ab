"""CLI commands for the embedded toy families: `shadowft zoo build [--family vlm]`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from shadowft.console import console

if TYPE_CHECKING:
    from shadowft.zoo.build import Preset

zoo_app = typer.Typer(
    help="The embedded toy Base/Instruct families, text and vision-language (built offline, cached).",
    no_args_is_help=True,
)


def _sigma(base: Path, instruct: Path) -> float:
    """sigma(base, instruct) averaged over `model.layers.*` tensors (the paper's metric)."""
    from shadowft.pair import similarity

    return float(similarity(base, instruct).mean)


@zoo_app.command("build")
def build(
    out: Annotated[
        Path | None,
        typer.Option(help="family directory (default: $SHADOWFT_HOME/zoo/<version>-<preset>-s<seed>)"),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(help="seed; the same seed gives bit-identical weights on the same machine"),
    ] = 0,
    force: Annotated[bool, typer.Option(help="reinstall or rebuild even if a finished family is cached there")] = False,
    from_scratch: Annotated[
        bool,
        typer.Option(
            "--from-scratch",
            help="train the family here (minutes) instead of installing the copy shipped with "
            "the package (default family, seed 0 only)",
        ),
    ] = False,
    preset: Annotated[
        str,
        typer.Option(help="'default' (the real family) or 'ci' (seconds; mechanics tests only)"),
    ] = "default",
    family: Annotated[
        str,
        typer.Option(help="'text' (the demo's family) or 'vlm' (Llava over it: zoo:vlm-base, zoo:vlm-instruct)"),
    ] = "text",
) -> None:
    """Install (or return the cached) toy Base/Instruct family with its fine-tuning and eval data.

    The default family (seed 0) is installed from the copy shipped with the package (checksums
    verified, the same weights on every machine); other seeds, `--preset ci` and `--from-scratch`
    train it here.
    """
    from shadowft.errors import ShadowFTError
    from shadowft.zoo import build_family
    from shadowft.zoo.build import Preset

    if preset not in ("default", "ci"):
        raise ShadowFTError(f"unknown preset {preset!r}", hint="use --preset default or --preset ci")
    if family not in ("text", "vlm"):
        raise ShadowFTError(f"unknown family {family!r}", hint="use --family text or --family vlm")
    if family == "vlm":
        _build_vlm(out, seed, force, from_scratch, cast(Preset, preset))
        return
    paths = build_family(
        out,
        seed=seed,
        force=force,
        preset=cast(Preset, preset),
        from_scratch=from_scratch,
    )
    manifest = paths.read_manifest()
    how = "installed from the package" if manifest.get("source") == "shipped" else "built here"
    console.print(f"[bold]toy family[/] {paths.root} ({how})")
    console.print(f"  base      {paths.base}")
    console.print(f"  instruct  {paths.instruct}")
    console.print(f"  data      {paths.data}")
    console.print(f"  sigma(base, instruct) = {_sigma(paths.base, paths.instruct):.4f}")
    timings = manifest["timings"]
    console.print(
        ("  original build time " if manifest.get("source") == "shipped" else "  build time ")
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f}s" for k, v in timings.items())
    )


def _build_vlm(out: Path | None, seed: int, force: bool, from_scratch: bool, preset: Preset) -> None:
    """`zoo build --family vlm`: the vision-language family, with sigma by part (tower, projector, LM)."""
    from shadowft.pair import check_pair
    from shadowft.zoo.vlm import build_vlm_family

    paths = build_vlm_family(
        out, seed=seed, preset=preset, from_scratch=from_scratch, force=force, progress=console.print
    )
    manifest = paths.read_manifest()
    shipped = manifest.get("source") == "shipped"
    console.print(f"[bold]toy VLM family[/] {paths.root} ({'installed from the package' if shipped else 'built here'})")
    console.print(f"  base      {paths.base}")
    console.print(f"  instruct  {paths.instruct}")
    console.print(f"  data      {paths.data / 'chart.jsonl'}")
    sigma = check_pair(paths.base, paths.instruct).sigma
    if sigma is not None:
        console.print("  sigma(base, instruct) by part: " + ", ".join(f"{k} {v:.4f}" for k, v in sigma.by_role.items()))
    console.print(f"  {'original build time' if shipped else 'build time'} {manifest['seconds']:.0f}s")
