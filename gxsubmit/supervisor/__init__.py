"""``gxsubmit supervise``: one worker process per identity, plus metrics and health.

:mod:`.arbiter` is the core loop (signals, spawn, reap, kill hung workers, restart backoff); the
other modules each own one thing it drives: :mod:`.reload` (SIGHUP, TLS rotation, rolling
restart), :mod:`.health` (readiness, READY=1, ``/status``), :mod:`.watcher` (the supervisor's own
database thread: statistics, unroutable sweep, fleet heartbeat), :mod:`.release` (rows of dead
workers), :mod:`.rundir` (one supervisor per runtime directory) and :mod:`.slot` (per-identity
state). The worker side of the status file and owner id is :mod:`gxsubmit.workerstatus`.
"""

from __future__ import annotations

from gxsubmit.supervisor.arbiter import Supervisor, run
from gxsubmit.supervisor.slot import Slot, State
from gxsubmit.supervisor.watcher import STATS_INTERVAL, STATS_INTERVAL_BUSY, OutboxWatcher
from gxsubmit.workerstatus import owner_id, status_path

__all__ = [
    "STATS_INTERVAL",
    "STATS_INTERVAL_BUSY",
    "OutboxWatcher",
    "Slot",
    "State",
    "Supervisor",
    "owner_id",
    "run",
    "status_file",
    "status_path",
]

#: The old name of :func:`gxsubmit.workerstatus.status_path`.
status_file = status_path
