"""Helpers of the container and distribution tests (imported by name; conftest is not importable)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tooling import missing_tool

ROOT = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc"]
#: Tags of this session only (another checkout may run these tests at the same time); the layers stay in
#: podman's build cache, so the next session's build is quick anyway.
SESSION = uuid.uuid4().hex[:8]
TEST_TAG = f"localhost/gxsubmit:pytest-{SESSION}"


def need_container_runtime() -> None:
    """Skip where no container runtime exists (fail under CI, where scripts/test.sh installs one)."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        missing_tool("podman/runc not installed (Debian: scripts/install-container-tools.sh)")
    if os.geteuid() != 0:
        missing_tool("the container tests run as root (podman with vfs storage, chroot builds)")


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_line: str  # deploy/build-image's last line: tag, id, size, build seconds, base
    seconds: float
