"""The default toy family as shipped with the package: installed by copy, verified by checksum.

Training the family takes minutes of CPU and its weights differ slightly from one CPU to the next
(kernels and bf16 paths differ), so the default family (preset `default`, seed 0) ships its built
files inside the package, with a SHA-256 of every file in `family.json`. `build_family` installs
that copy unless asked to build from scratch: every machine then gets the same weights and the
demo starts training within a minute. `shadowft zoo build --from-scratch` rebuilds it, and a slow
test checks that a rebuild meets the same skill requirements.

Maintainers: after changing the family (corpus, config, version), rebuild it from scratch and run
`python -m shadowft.zoo.shipped DIR` to replace the shipped copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from shadowft.errors import ShadowFTError

SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
MANIFEST = "family.json"
# The members a family consists of; the build's scratch tokenizer dir is not shipped.
MEMBERS = ("base", "instruct", "data")


def shipped_dir(version: str, preset: str, seed: int) -> Path:
    return SHIPPED_ROOT / f"{version}-{preset}-s{seed}"


def file_checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under the family's members, keyed by POSIX path relative to `root`."""
    out: dict[str, str] = {}
    for member in MEMBERS:
        for path in sorted((root / member).rglob("*")):
            if path.is_file():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def find_shipped(version: str, preset: str, seed: int, config: dict) -> Path | None:
    """The shipped family built with exactly this version, seed and config, if the package has it."""
    root = shipped_dir(version, preset, seed)
    manifest = root / MANIFEST
    if not manifest.is_file():
        return None
    found = json.loads(manifest.read_text())
    if found.get("version") != version or found.get("seed") != seed or found.get("config") != config:
        return None
    return root


def install_shipped(src: Path, dest: Path) -> dict:
    """Copy the shipped family at `src` into the empty dir `dest` and verify every checksum.

    Returns the manifest to write (the shipped one, marked as installed). A missing or changed
    file fails with a clear error instead of giving a silently different model.
    """
    manifest = json.loads((src / MANIFEST).read_text())
    expected: dict[str, str] = manifest.get("checksums", {})
    for member in MEMBERS:
        shutil.copytree(src / member, dest / member)
    got = file_checksums(dest)
    bad = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    if bad:
        raise ShadowFTError(
            f"the shipped toy family at {src} is damaged: {len(bad)} file(s) differ from its checksums (e.g. {bad[0]})",
            hint="reinstall shadowft, or build the family with `shadowft zoo build --from-scratch`",
        )
    manifest["source"] = "shipped"
    return manifest


def export_family(family_root: Path, dest_root: Path = SHIPPED_ROOT) -> Path:
    """Write a built family into the package's shipped folder, with checksums (maintainers only)."""
    manifest = json.loads((Path(family_root) / MANIFEST).read_text())
    dest = dest_root / f"{manifest['version']}-{manifest['config']['preset']}-s{manifest['seed']}"
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for member in MEMBERS:
        shutil.copytree(Path(family_root) / member, tmp / member)
    for path in tmp.rglob("*"):  # readable by everyone, as package data must be
        path.chmod(0o755 if path.is_dir() else 0o644)
    manifest.pop("source", None)
    manifest["checksums"] = file_checksums(tmp)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m shadowft.zoo.shipped FAMILY_DIR")
    print(export_family(Path(sys.argv[1])))
