"""Running the real ``alti-onnx`` console script, and the one-line error contract it keeps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def console_script() -> str:
    beside = Path(sys.executable).with_name("alti-onnx")
    found = str(beside) if beside.exists() else shutil.which("alti-onnx")
    if found is None:
        pytest.skip("the alti-onnx console script is not installed")
    return found


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def run_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    arguments = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.run(
        [console_script(), *arguments], capture_output=True, text=True, env=env or cli_env(), timeout=timeout,
        check=False, input=input,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit code 2, exactly one non-empty stderr line starting with 'error:' holding ``words``."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    line = lines[0]
    assert line.startswith("error:"), line
    for word in words:
        assert word in line, (word, line)
    return line
