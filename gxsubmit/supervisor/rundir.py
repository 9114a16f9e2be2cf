"""The runtime-directory lock: one supervisor per directory, or status files and metrics collide."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gxsubmit.log import get_logger
from gxsubmit.workerstatus import STATUS_GLOB

__all__ = ["lock_runtime_dir"]

log = get_logger("gxsubmit.supervisor")


def lock_runtime_dir(runtime_dir: Path, worker_id: str) -> int | None:
    """Take ``supervisor.lock`` (held until this process exits) and remove stale status files.

    Returns the lock's descriptor, or None (logged) when another supervisor holds it.
    """
    runtime_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(runtime_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        log.error("Another supervisor uses this runtime directory: give each supervisor on a host "
                  "its own GXSUBMIT_WORKER_ID (and GXSUBMIT_RUNTIME_DIR, if set)",
                  extra={"runtime_dir": str(runtime_dir), "worker_id": worker_id})
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    # A status file left by an earlier run would pass for a heartbeat of a worker with a reused pid.
    for stale in runtime_dir.glob(STATUS_GLOB):
        stale.unlink(missing_ok=True)
    return fd
