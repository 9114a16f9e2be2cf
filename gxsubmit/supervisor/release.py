"""Row release: hand back the rows of workers that are gone instead of waiting for their leases.

A worker that exits gracefully has released its rows itself; these catch crashes, SIGKILLs and
workers killed at the end of a drain. Rows are found by their ``locked_by`` owner id
(:func:`gxsubmit.workerstatus.owner_id`), so only rows of this host's dead processes move.
"""

from __future__ import annotations

from collections.abc import Sequence

from gxsubmit.config import Config
from gxsubmit.exitcodes import RET_CONFIG
from gxsubmit.log import get_logger
from gxsubmit.supervisor.watcher import OutboxWatcher
from gxsubmit.workerstatus import owner_id

__all__ = ["release_exited", "release_rows"]

log = get_logger("gxsubmit.supervisor")


def release_exited(watcher: OutboxWatcher, cfg: Config, identity: str, pid: int, code: int, *,
                   stopped_by_us: bool) -> None:
    """After a worker's exit: hand its rows back (in the background) unless it exited cleanly.

    A crash or a watchdog kill counts against the rows the worker held (WORKER_CRASH at the limit);
    a worker stopped by us (drain, retire, reload) or one that could not start did not crash
    because of a row.
    """
    if code == 0:
        return
    crashed = not (stopped_by_us or code == RET_CONFIG)
    watcher.release([owner_id(cfg.worker_id, identity, pid)],
                    cfg.max_worker_crashes if crashed else None, identity)


def release_rows(watcher: OutboxWatcher, worker_id: str, pids: Sequence[tuple[str, int]],
                 timeout: float) -> None:
    """Hand back every row still held by these (identity, pid) processes; waits up to ``timeout``."""
    owners = [owner_id(worker_id, name, pid) for name, pid in pids]
    if not owners:
        return
    try:
        watcher.release(owners).result(timeout)
    except Exception as exc:
        log.warning(
            "Could not release rows of stopped workers; they return when their leases expire",
            extra={"error": f"{type(exc).__name__}: {exc}", "owners": owners},
        )
