"""The supervisor's own database work, on a thread of its own.

Queue statistics, failing unroutable rows, the fleet heartbeat and handing back rows of dead workers
run on one background thread with its own asyncio loop, so a slow or dead database never stalls the
loop that reaps children and answers probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

from gxsubmit.config import Config
from gxsubmit.log import get_logger
from gxsubmit.workerstatus import owner_id

if TYPE_CHECKING:
    from gxsubmit.fleet import FleetReporter
    from gxsubmit.outbox import OutboxStore, QueueStats

__all__ = ["STATS_INTERVAL", "STATS_INTERVAL_BUSY", "OutboxWatcher"]

log = get_logger("gxsubmit.supervisor")

T = TypeVar("T")

#: How often the supervisor refreshes queue statistics when the queue is idle (no unfinished rows and
#: nothing changed since the last refresh): an idle replica must cost the database almost nothing.
STATS_INTERVAL = 15.0
#: ... and while rows are moving, so the outbox gauges stay current.
STATS_INTERVAL_BUSY = 3.0
_UNFINISHED = ("PENDING", "CLAIMED", "SUBMITTED")
#: Database reconnect backoff of the supervisor's own connection. The cap is the workers' (dblink): its
#: statistics are part of /readyz, so a longer cap kept a replica unready up to that long after its
#: database came back (30 s before, where the workers were ready again within 10 s).
DB_RETRY_FIRST = 1.0
DB_RETRY_CAP = 10.0


def _has_unroutable(stats: QueueStats, routed: Sequence[str]) -> bool:
    known = set(routed)
    return any(status == "PENDING" and n and ctype not in known
               for (status, ctype), n in stats.by_status_type.items())


class _BeatOnly(Exception):
    """A watcher pass that was due for the fleet heartbeat only (statistics are not due yet)."""


class _Schedule:
    """When the watcher's next pass runs: statistics at the interval the last refresh chose, the fleet
    heartbeat in between, and while the database fails a retry delay that doubles up to
    ``DB_RETRY_CAP``. Apart from the loop so that these decisions are tested with a fake clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.delay = DB_RETRY_FIRST  # the wait after the next failure
        self.next_stats = 0.0  # monotonic time statistics are due; 0: at the next pass (start, failure)
        self._retry_in = DB_RETRY_FIRST

    def stats_due(self) -> bool:
        return self._clock() >= self.next_stats

    def refreshed(self, interval: float) -> None:
        """The statistics were read: the next in ``interval`` s, and a failure starts the backoff over."""
        self.delay = DB_RETRY_FIRST
        self.next_stats = self._clock() + interval

    def failed(self) -> None:
        """A pass failed: retry after the current delay (statistics first), the one after twice later."""
        self._retry_in, self.delay = self.delay, min(self.delay * 2, DB_RETRY_CAP)
        self.next_stats = 0.0

    def sleep(self, beat_due_in: Callable[[], float] | None) -> float:
        """Seconds to wait after a pass: the retry delay after a failure; else until statistics are due,
        or the fleet heartbeat (``beat_due_in``) if sooner."""
        if not self.next_stats:
            return self._retry_in
        wait = max(0.0, self.next_stats - self._clock())
        return wait if beat_due_in is None else min(wait, beat_due_in())


class OutboxWatcher:
    """The supervisor's own database work, on a thread with its own event loop.

    Refreshes queue statistics every ``STATS_INTERVAL`` (``STATS_INTERVAL_BUSY`` while rows move)
    and fails the unroutable rows those statistics reveal; hands back
    rows of dead workers on request. Survives the database being down: it logs once per
    outage, retries with backoff and reports the state through :attr:`ok` and :attr:`error`.
    """

    def __init__(self, cfg: Config, routed_types: Callable[[], Sequence[str]],
                 fleet: FleetReporter | None = None) -> None:
        self._cfg = cfg
        self._routed_types = routed_types
        self._fleet = fleet  # this replica's row in the registry and the fleet-aware sweep (gxsubmit.fleet)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="outbox-watcher", daemon=True)
        self._store: OutboxStore | None = None
        self._stop: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self.ok: bool | None = None  # None: not tried yet
        self.error: str | None = None
        self.stats: QueueStats | None = None
        self.stats_at: float | None = None
        self.unroutable_failed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def release(self, owners: Sequence[str], crash_limit: int | None = None,
                identity: str = "") -> Future[int]:
        """Hand back CLAIMED/SUBMITTED rows locked by ``owners`` (dead workers of this host). With
        ``crash_limit`` the workers (of ``identity``) crashed: their rows' claims count as crashes
        (migration 0009)."""
        work = self._release(list(owners), crash_limit, identity)
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    # -- thread side

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.run_until_complete(self._close())
            self._loop.close()

    async def _connect(self) -> OutboxStore:
        if self._store is None:
            from gxsubmit.dbconn import with_tcp
            from gxsubmit.outbox import OutboxStore

            self._store = await OutboxStore.connect(
                with_tcp(self._cfg.database_conninfo, self._cfg),
                schema=self._cfg.schema,
                worker_id=owner_id(self._cfg.worker_id, "supervisor", os.getpid()),
                connect_timeout=self._cfg.connect_timeout,
            )
        return self._store

    async def _bounded(self, coro: Awaitable[T]) -> T:
        """A statement under the client-side deadline: a blackholed link fails it (and /readyz)."""
        try:
            return await asyncio.wait_for(coro, self._cfg.db_deadline)
        except TimeoutError:
            raise TimeoutError(f"no answer from the database within {self._cfg.db_deadline:g} s") from None

    async def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()

    def _failed(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}".strip()
        if self.ok is not False:
            log.error("Outbox database unavailable, retrying with backoff", extra={"error": text})
        self.ok, self.error = False, text

    async def _refresh(self, store: OutboxStore) -> tuple[QueueStats, int]:
        """Queue statistics, after failing the unroutable rows they reveal (and how many that was)."""
        stats = await self._bounded(store.stats())
        routed = list(self._routed_types())
        if not _has_unroutable(stats, routed):
            # Only when the statistics show PENDING rows no route serves: an idle replica does not
            # pay a statement for the sweep every pass.
            return stats, 0
        # With the fleet registry, only rows no replica has routed for the grace period fail.
        if self._fleet is not None:
            n = await self._bounded(self._fleet.sweep(await store.connection(), routed))
        else:
            n = await self._bounded(store.fail_unroutable(routed))
        if n:
            stats = await self._bounded(store.stats())
        return stats, n

    def _took(self, stats: QueueStats, n: int) -> float:
        """Record a refresh that worked; returns the wait until the next one."""
        busy = any(stats.by_status.get(s, 0) for s in _UNFINISHED) or (
            self.stats is not None and self.stats.by_status != stats.by_status)
        if n:
            self.unroutable_failed += n
            log.warning("Failed unroutable commands", extra={"count": n, "error_code": "UNROUTABLE"})
        if self.ok is False:
            log.info("Outbox database reachable again")
        self.stats, self.stats_at = stats, time.time()
        self.ok, self.error = True, None
        return STATS_INTERVAL_BUSY if busy else STATS_INTERVAL

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        schedule = _Schedule()
        fleet = self._fleet
        while not self._stop.is_set():
            try:
                async with self._lock:
                    store = await self._connect()
                    if fleet is not None and fleet.due_in() <= 0:
                        await self._bounded(fleet.beat(await store.connection()))
                    if not schedule.stats_due():  # woken for the heartbeat only
                        raise _BeatOnly
                    stats, n = await self._refresh(store)
                schedule.refreshed(self._took(stats, n))
            except _BeatOnly:
                pass
            except Exception as exc:  # any DB failure: drop the connection, back off, retry
                self._failed(exc)
                await self._close()
                schedule.failed()
            wait = schedule.sleep(fleet.due_in if fleet is not None else None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
        if fleet is not None and self._store is not None:
            with contextlib.suppress(Exception):  # a stop the database does not see: the row goes stale
                await asyncio.wait_for(fleet.stop(await self._store.connection()), self._cfg.connect_timeout)

    async def _release(self, owners: list[str], crash_limit: int | None = None, identity: str = "") -> int:
        assert self._lock is not None
        failed: list[str] = []
        try:
            async with self._lock:
                store = await self._connect()
                if crash_limit is None:
                    n: int = await self._bounded(store.release_owned(owners))
                else:
                    n, failed = await self._bounded(store.release_crashed(owners, crash_limit))
        except Exception as exc:
            self._failed(exc)
            await self._close()
            raise
        if n:
            log.info("Released rows of stopped workers", extra={"count": n, "owners": owners})
        if failed:
            log.error("Failed commands that kept crashing their worker", extra={
                "count": len(failed), "owners": owners, "error_code": "WORKER_CRASH"})
            from gxsubmit.metrics import COMMANDS_FAILED  # imported by Supervisor.run, after the metrics dir

            for command_type in failed:
                COMMANDS_FAILED.labels(identity, command_type, "WORKER_CRASH").inc()
        return n + len(failed)
