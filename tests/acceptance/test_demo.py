"""``gxsubmit demo`` is the README's first command: it must work from a clean machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import clean_env


def test_demo_runs_end_to_end_and_audits_exactly_once(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "gxsubmit", "demo", "--commands", "200", "--workdir", str(workdir)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for name in ("org1-super-admin", "org1-admin", "org1-partner-api"):
        assert f"Successfully connected Fabric client for {name}" in out
    assert "All Fabric clients initialized successfully (count=3)" in out
    assert "PAYLOAD_INVALID" in out and "UNROUTABLE" in out and "insufficient balance" in out
    assert "0 missing, 0 duplicated, 0 unexpected, 0 unresolved: exactly once" in out
    assert "order keys: 4 commands on 2 keys, each committed in a later block than the one written" in out
    assert "service stopped (exit 0)" in out
    # Nothing is left running: the service's runtime directory lock is free again.
    import fcntl
    import os

    fd = os.open(workdir / "run" / "supervisor.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
