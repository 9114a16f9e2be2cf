"""A missing tool skips a test on a laptop but fails it under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
_PROBE = (
    "from tooling import missing_tool\n\n"
    "def test_needs_tool():\n    missing_tool('frobnicator is not installed')\n"
)


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(_PROBE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(_TESTS)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
               "--rootdir", str(tmp_path), str(tmp_path)]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def test_skips_without_ci(tmp_path: Path) -> None:
    proc = _run(tmp_path, "")
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout and "frobnicator" in proc.stdout


def test_fails_under_ci(tmp_path: Path) -> None:
    proc = _run(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    assert "1 failed" in proc.stdout and "required in CI: frobnicator" in proc.stdout
