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


def test_public_names_stay_themselves_after_any_submodule_is_imported():
    """A submodule named like a public function (``graph_rewrites.instrument``) would replace the
    function on the package once anything imported the submodule."""
    code = (
        "import importlib, pkgutil, graph_rewrites\n"
        "for m in pkgutil.walk_packages(graph_rewrites.__path__, 'graph_rewrites.'): importlib.import_module(m.name)\n"
        "import types\n"
        "bad = [n for n in graph_rewrites.__all__ if isinstance(getattr(graph_rewrites, n), types.ModuleType)]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
