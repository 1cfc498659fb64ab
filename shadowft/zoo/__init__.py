"""The embedded toy Base/Instruct family: built offline, deterministically, and cached."""

from shadowft.zoo.build import (
    FamilyConfig,
    FamilyPaths,
    build_family,
    default_family_dir,
)

__all__ = ["FamilyConfig", "FamilyPaths", "build_family", "default_family_dir"]
