"""The image, built once per session with deploy/build-image (no registry: an mmdebstrap base).

Containers here: podman with the vfs storage driver (no overlay mounts needed), chroot isolation for
builds, runc with cgroupfs and explicit ulimits for runs. The base root filesystem is cached outside the
checkout (GXSUBMIT_CACHE, default /var/cache/gxsubmit) and podman's layer cache keeps unchanged steps,
so a second run builds in seconds; a fresh machine makes both (about 1-2 minutes more).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from imagetools import PODMAN, ROOT, TEST_TAG, BuiltImage, need_container_runtime, podman
from tooling import missing_tool


@pytest.fixture(scope="session")
def built_image() -> Iterator[BuiltImage]:
    need_container_runtime()
    if shutil.which("mmdebstrap") is None:
        missing_tool("mmdebstrap not installed (Debian: scripts/install-container-tools.sh)")
    env = {**os.environ, "PODMAN": " ".join(PODMAN[:3])}
    start = time.monotonic()
    proc = subprocess.run([str(ROOT / "deploy" / "build-image"), "--local-base", "--tag", TEST_TAG],
                          capture_output=True, text=True, timeout=1500, env=env, check=False)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = proc.stdout.strip().splitlines()[-1]
    print(f"\nbuilt in {seconds:.0f}s (machine shared with other test runs): {line}")
    yield BuiltImage(TEST_TAG, line, seconds)
    podman("untag", TEST_TAG, TEST_TAG, check=False)  # this name only: other sessions may share the id
