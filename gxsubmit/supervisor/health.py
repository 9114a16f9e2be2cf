"""Health: readiness per identity, systemd READY=1, the ``/status`` document and the gauges.

The main loop computes everything here once per tick (:meth:`Health.publish`) into immutable
snapshots; the HTTP thread only reads those through :class:`Probe`, so no lock is needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gxsubmit.log import get_logger
from gxsubmit.supervisor.slot import Slot, State

if TYPE_CHECKING:
    from gxsubmit.supervisor.arbiter import Supervisor

__all__ = ["HEALTH_STALE", "STATUSES", "Health", "Probe", "readiness"]

log = get_logger("gxsubmit.supervisor")

#: /healthz fails when the main loop has not ticked for this long.
HEALTH_STALE = 10.0
#: Statuses reported in gxsubmit_outbox_rows even when the table has none of them.
STATUSES = ("PENDING", "CLAIMED", "SUBMITTED", "COMMITTED", "FAILED")


def _worker_reason(slot: Slot, draining: bool, now: float) -> str:
    st = slot.status
    suffix = f": {st.last_error}" if st is not None and st.last_error else ""
    if draining:
        return "draining"
    if slot.state is State.CONFIG_ERROR:
        return f"configuration error ({slot.last_exit}): {slot.reason}"
    if slot.state is State.BACKOFF:
        return (f"worker not running ({slot.last_exit or 'not started'}), "
                f"restart in {max(0.0, slot.respawn_at - now):.1f}s")
    if st is None:
        return "starting"
    if not st.db_ok:
        return "database unavailable" + suffix
    if not st.gateway_ok:
        return "gateway unavailable" + suffix
    if st.breaker_open:
        return "circuit breaker open" + suffix
    if st.draining:
        return "draining"
    return "ok"


def readiness(slots: Mapping[str, Slot], *, draining: bool, db_ok: bool | None, db_error: str | None,
              now: float) -> tuple[bool, dict[str, str]]:
    """Ready when every identity still in the catalogue is connected and the outbox is reachable;
    the reasons name what is not (``/readyz`` shows them)."""
    reasons = {name: _worker_reason(slot, draining, now)
               for name, slot in sorted(slots.items()) if not slot.retiring}
    if db_ok is False:
        reasons["outbox"] = f"database unavailable: {db_error}"
    ok = bool(reasons) and all(r == "ok" for r in reasons.values())
    return ok, reasons


def _worker_doc(slot: Slot, wall: float) -> dict[str, Any]:
    st = slot.status
    return {
        "pid": slot.pid,
        "state": slot.state.value,
        "role": slot.role,
        "restarts": slot.restarts,
        "last_exit": slot.last_exit,
        "reason": slot.reason,
        "db_ok": st.db_ok if st else None,
        "gateway_ok": st.gateway_ok if st else None,
        "breaker_open": st.breaker_open if st else None,
        "in_flight": st.in_flight if st else None,
        "committed": st.committed if st else None,
        "failed": st.failed if st else None,
        "last_error": st.last_error if st else None,
        "draining": st.draining if st else None,
        "wakeups": st.wakeups if st else None,
        "heartbeat_age_s": round(wall - slot.beat, 3) if slot.pid is not None else None,
    }


class Health:
    """Readiness, READY=1 and the status snapshot of one supervisor."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.ready_sent = False
        self.all_ready_logged = False
        self.snapshot: dict[str, Any] = {}
        self.ready: tuple[bool, dict[str, str]] = (False, {})

    def readiness(self) -> tuple[bool, dict[str, str]]:
        sup = self.sup
        return readiness(sup.slots, draining=sup.draining, db_ok=sup.watcher.ok, db_error=sup.watcher.error,
                         now=time.monotonic())

    def announce(self) -> None:
        """READY=1 and the operators' log line once every worker that can start is connected."""
        sup = self.sup
        live = [s for s in sup.slots.values() if not s.retiring]
        if self.ready_sent or sup.draining or not live:
            return
        if any(s.state in (State.STARTING, State.BACKOFF) and not s.ready_once for s in live):
            return
        connected = [s.identity for s in live if s.ready_once]
        broken = {s.identity: s.reason or "" for s in live if not s.ready_once}
        if not broken and not self.all_ready_logged:
            log.info("All Fabric clients initialized successfully", extra={"count": len(connected)})
            self.all_ready_logged = True
        elif broken:
            log.error(
                "Some Fabric clients failed to initialize",
                extra={"count": len(connected), "failed": broken},
            )
        sup.notifier.ready(f"{len(connected)}/{len(live)} identities connected")
        self.ready_sent = True
        log.info("Outbox submitter worker started successfully", extra={"identities": connected})

    def publish(self) -> None:
        """Refresh the supervisor's gauges and the snapshot the HTTP thread reads."""
        sup = self.sup
        m = sup.metrics
        for slot in sup.slots.values():
            up = slot.pid is not None and slot.state is State.RUNNING and not slot.retiring
            m.WORKER_UP.labels(slot.identity).set(1 if up else 0)
        stats = sup.watcher.stats
        if stats is not None:
            for status in sorted(set(STATUSES) | set(stats.by_status)):
                m.OUTBOX_ROWS.labels(status).set(stats.by_status.get(status, 0))
            m.OLDEST_PENDING_AGE.set(stats.oldest_pending_age_s or 0.0)
        self.ready = self.readiness()
        self.snapshot = self.build_status()
        sup.fleet.observe(self.snapshot["workers"], sup.watcher.ok, sup.watcher.error)

    def _queue_doc(self) -> dict[str, Any]:
        watcher = self.sup.watcher
        doc: dict[str, Any] = {
            "db_ok": watcher.ok,
            "error": watcher.error,
            "updated_at": watcher.stats_at,
            "unroutable_failed": watcher.unroutable_failed,
        }
        stats = watcher.stats
        if stats is not None:
            doc.update(
                by_status=dict(stats.by_status),
                by_status_type={f"{st}/{ty}": n for (st, ty), n in stats.by_status_type.items()},
                oldest_pending_age_s=stats.oldest_pending_age_s,
                failed_by_code=dict(stats.failed_by_code),
                retrying_by_code=dict(stats.retrying_by_code),
                committed_estimated=stats.committed_estimated,
            )
        return doc

    def build_status(self) -> dict[str, Any]:
        sup = self.sup
        wall = time.time()
        ready, reasons = self.ready
        return {
            "supervisor": {
                "pid": os.getpid(),
                "worker_id": sup.cfg.worker_id,
                "started_at": sup.started_wall,
                "draining": sup.draining,
                "ready": ready,
                "readiness": reasons,
            },
            "workers": {name: _worker_doc(slot, wall) for name, slot in sorted(sup.slots.items())},
            "queue": self._queue_doc(),
            # One line each, e.g. a LISTEN behind a transaction pooler (workers poll instead).
            "warnings": sorted({s.status.wakeup_warning for s in sup.slots.values()
                                if s.status and s.status.wakeup_warning}),
        }


class Probe:
    """Read-only view for the HTTP thread: only swaps of immutable snapshots cross threads."""

    def __init__(self, sup: Supervisor) -> None:
        self._sup = sup

    def healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self._sup.last_tick
        if age > HEALTH_STALE:
            return False, f"supervisor loop stalled for {age:.1f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, Mapping[str, str]]:
        return self._sup.health.ready

    def status(self) -> Mapping[str, Any]:
        return self._sup.health.snapshot
