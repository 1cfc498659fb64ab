"""The embedded model families (text, and vision-language), installed once and cached on disk by `shadowft.zoo`."""

from __future__ import annotations

from prefect import task

from shadowft.zoo.build import FamilyPaths, build_family
from shadowft.zoo.vlm import build_vlm_family


@task(name="embedded_family", persist_result=False)
def embedded_family(seed: int = 0) -> FamilyPaths:
    return build_family(seed=seed, progress=False)


@task(name="embedded_vlm_family", persist_result=False)
def embedded_vlm_family(seed: int = 0) -> FamilyPaths:
    from prefect.logging import get_run_logger

    return build_vlm_family(seed=seed, progress=get_run_logger().info)
