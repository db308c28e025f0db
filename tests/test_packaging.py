"""The package is alti_onnx and graph_rewrites only: the recipes (models/) and the test tooling stay
in the repository, the package never imports them, and nothing in it or its docs points outside."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("alti_onnx", "graph_rewrites")


def test_the_wheel_holds_the_two_packages_only(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == set(PACKAGES)


def test_the_package_never_imports_the_recipes():
    pattern = re.compile(r"^\s*(from\s+models[\s.]|import\s+models\b)", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_nothing_points_outside_the_repository():
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    files += [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "models").rglob("*.py")]
    offenders = [str(p.relative_to(ROOT)) for p in files if re.search(r"\.\./shared|/work/", p.read_text(encoding="utf-8"))]
    assert offenders == []
