"""What one worker reports in its status file (read by the supervisor for ``/readyz``), from its parts.

Built with the worker, before its database is up, so the heartbeat writes a true status from the first
second: not ready, the database and the gateway as far as they are known.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Protocol

from gxsubmit.fabric import GatewayClient
from gxsubmit.fabric.commits import CommitWatcher
from gxsubmit.gatewayhealth import GatewayHealth
from gxsubmit.job import Job
from gxsubmit.metrics import WorkerMetrics
from gxsubmit.outcomes import Outcomes
from gxsubmit.wakeups import Wakeups
from gxsubmit.workerstatus import WorkerStatus, write_status

__all__ = ["StatusBoard"]

#: The worker's logger: this line was always the worker's, and log filters name it.
log = logging.getLogger("gxsubmit.worker")


class DbState(Protocol):
    """What the status file says of the database side (gxsubmit.workerparts.WorkerDb: both links)."""

    @property
    def ok(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


class StatusBoard:
    """The worker's status: a few flags it sets, the rest read from its parts at each write."""

    def __init__(
        self,
        path: Path,
        identity: str,
        *,
        gateway_target: str,
        cert_not_after: datetime,
        jobs: Mapping[uuid.UUID, Job],
        db: DbState,
        gateway: GatewayClient,
        health: GatewayHealth,
        outcomes: Outcomes,
        watchers: Mapping[str, CommitWatcher],
        wakeups: Wakeups,
        metrics: WorkerMetrics,
    ) -> None:
        self.path = path
        self.identity = identity
        self._gateway_target = gateway_target
        #: the signing certificate's expiry (a rotated wallet moves it)
        self.cert_not_after = cert_not_after
        self._jobs = jobs
        self._db = db
        self._gateway = gateway
        self._health = health
        self._outcomes = outcomes
        self._watchers = watchers
        self._wakeups = wakeups
        self._metrics = metrics
        self.started = time.time()
        #: set once the pipeline runs; cleared at the end of shutdown
        self.ready = False
        self.draining = False
        #: the worker's own last trouble (claims, the gateway at start); the pipeline's comes first
        self.last_error: str | None = None

    def write(self) -> None:
        """Write the status file now (atomically); a failure is logged, never raised."""
        jobs = self._jobs
        breaker_open = not self._health.breaker.is_closed
        self._metrics.breaker_open.set(1 if breaker_open else 0)
        self._metrics.in_flight.set(len(jobs))
        # The pipeline only learns of an outage from its own calls; an idle worker would report a gateway
        # it cannot reach (a peer down, a TLS CA that no longer matches) as fine. The channel knows.
        unreachable = self._gateway.connectivity() == "TRANSIENT_FAILURE"
        outcomes = self._outcomes
        last_error = outcomes.last_error or self.last_error or self._db.last_error
        if unreachable:
            stream_error = next((w.last_error for w in self._watchers.values() if w.last_error), None)
            last_error = stream_error or f"cannot connect to gateway {self._gateway_target}"
        status = WorkerStatus(
            pid=os.getpid(),
            identity=self.identity,
            ts=time.time(),
            started_at=self.started,
            ready=self.ready and not self.draining,
            db_ok=self._db.ok,
            gateway_ok=bool(self.ready and self._health.ok and not unreachable),
            breaker_open=breaker_open,
            in_flight=len(jobs),
            committed=outcomes.n_committed,
            failed=outcomes.n_failed,
            last_error=last_error,
            draining=self.draining,
            cert_not_after=self.cert_not_after.isoformat(),
            commit_stream=any(w.live for w in self._watchers.values()),
            wakeups=self._wakeups.mode,
            wakeup_warning=self._wakeups.warning,
        )
        try:
            write_status(self.path, status)
        except OSError as exc:
            log.warning("Cannot write status file", extra={"path": str(self.path), "error": str(exc)})
