"""Two test sessions at once on one machine (two checkouts, two CI jobs of one runner) as root.

pytest makes its per-user directory (pytest-of-root in the temp directory) private (mode 0700) at every
session start; an embedded PostgreSQL under it runs as an unprivileged user and lost its data directory
when another session started: "could not access directory ... Permission denied" on its next start
(seen in a CI run beside other suites). The suite's temporary directories live elsewhere
(tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gxsubmit.pgembed import EmbeddedPostgres, free_port


@pytest.mark.skipif(os.geteuid() != 0, reason="the embedded server runs as another user only under root")
def test_an_embedded_server_restarts_after_another_pytest_session_started(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pgdata", port=free_port(), fsync=False)
    pg.start()
    pg.stop()
    other = tmp_path / "other"
    other.mkdir()
    (other / "test_other.py").write_text("def test_uses_tmp_path(tmp_path):\n    assert tmp_path.is_dir()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(other), str(other)], capture_output=True, text=True, timeout=120, cwd=other,
                          env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    pg.start()  # its data directory is still reachable
    pg.stop()
