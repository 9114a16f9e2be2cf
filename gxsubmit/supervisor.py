"""``gxsubmit supervise``: one worker process per identity, plus metrics and health.

The shape follows gunicorn's arbiter. Signal handlers only record the signal (a queue
plus a wake-up pipe); the main loop acts on it, reaps children, kills hung workers and
restarts dead ones with backoff. Workers are started by ``posix_spawn`` of a fresh
interpreter (``python -m gxsubmit worker``), never by fork: gRPC is not fork-safe, and a
fresh process also gives every worker its own key, channel and DB connection.

Database work of the supervisor itself (queue statistics, failing unroutable rows,
handing back rows of dead workers) runs on one background thread with its own asyncio
loop, so a slow or dead database never stalls the loop that reaps children and answers
probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import fcntl
import os
import queue
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from gxsubmit.config import Config
from gxsubmit.exitcodes import RET_CONFIG, RET_FAIL, RET_OK
from gxsubmit.log import get_logger, setup_logging
from gxsubmit.sdnotify import Notifier
from gxsubmit.secrets import no_core_dumps

if TYPE_CHECKING:
    from gxsubmit.catalog import Catalog
    from gxsubmit.fleet import FleetReporter
    from gxsubmit.httpserver import HttpServer
    from gxsubmit.outbox import OutboxStore, QueueStats

__all__ = ["Supervisor", "run", "status_file"]

log = get_logger("gxsubmit.supervisor")

#: Main loop period: how often children, heartbeats and readiness are looked at.
T = TypeVar("T")

TICK = 0.25
#: How often the gateway TLS files are checked for a change (three stat calls).
TLS_CHECK_INTERVAL = 3.0
#: Restart backoff: first delay, cap, and the healthy uptime after which it resets
#: (docs/design.md#process-model).
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0
BACKOFF_RESET_AFTER = 60.0
#: The first heartbeat of a new worker may take this long (interpreter start, gRPC import, key load).
BOOT_TIMEOUT = 30.0
#: After SIGABRT a hung worker gets this long to dump its stacks and die before SIGKILL.
ABORT_GRACE = 5.0
#: How often the supervisor refreshes queue statistics when the queue is idle (no unfinished rows and
#: nothing changed since the last refresh): an idle replica must cost the database almost nothing.
STATS_INTERVAL = 15.0
#: ... and while rows are moving, so the outbox gauges stay current.
STATS_INTERVAL_BUSY = 3.0
_UNFINISHED = ("PENDING", "CLAIMED", "SUBMITTED")
#: Database reconnect backoff of the supervisor's own connection.
DB_RETRY_FIRST = 1.0
DB_RETRY_CAP = 30.0
#: /healthz fails when the main loop has not ticked for this long.
HEALTH_STALE = 10.0
#: Statuses reported in gxsubmit_outbox_rows even when the table has none of them.
STATUSES = ("PENDING", "CLAIMED", "SUBMITTED", "COMMITTED", "FAILED")

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT)


def status_file(runtime_dir: Path, identity: str) -> Path:
    """Where the worker for ``identity`` writes its heartbeat (contracts: Service)."""
    return runtime_dir / f"worker-{identity}.json"


def owner_id(worker_id: str, identity: str, pid: int) -> str:
    """The ``locked_by`` value of one worker process (unique per process, see gxsubmit.worker)."""
    return f"{worker_id}:{identity}:{pid}"


class State(enum.Enum):
    STARTING = "starting"  # spawned, not yet connected
    RUNNING = "running"  # reported a connected gateway at least once
    BACKOFF = "backoff"  # dead, waiting to be restarted
    CONFIG_ERROR = "config_error"  # exited 78; waits for SIGHUP
    STOPPED = "stopped"  # exited during shutdown or after retirement


@dataclass
class Slot:
    """Everything the supervisor knows about one identity's worker."""

    identity: str
    role: str
    state: State = State.BACKOFF
    pid: int | None = None
    spawned_at: float = 0.0  # time.monotonic()
    spawned_wall: float = 0.0  # time.time(), comparable with the status file's mtime
    restarts: int = 0
    delay: float = 0.0  # next restart delay
    respawn_at: float = 0.0
    last_exit: str | None = None
    reason: str | None = None
    status: dict[str, Any] | None = None  # last status file written by the current pid
    beat: float = 0.0  # wall time of the last heartbeat (status mtime or spawn time)
    abort_sent: float | None = None
    kill_sent: bool = False
    ready_once: bool = False
    reload_requested: bool = False  # SIGTERMed by a rolling restart: respawn at once
    retiring: bool = False  # no longer in the catalogue: do not respawn
    pids: list[int] = field(default_factory=list)  # every process this slot ran, for the final release


# --- process helpers ------------------------------------------------------------------------


def _prepare_metrics_env(cfg: Config) -> None:
    """Make this process a prometheus-client multiprocess process, owning a clean directory.

    prometheus-client picks single- or multi-process mode when ``prometheus_client.values``
    is first imported, from ``PROMETHEUS_MULTIPROC_DIR``. The CLI imports nothing that pulls
    it in before ``run``, so normally setting the variable here is enough. If something
    imported it earlier without the variable (an embedding program), the values this process
    would write are not shared: re-execute once with the variable set. ``exec`` keeps the pid,
    so this is safe as PID 1 in a container.
    """
    path = str(cfg.metrics_dir.absolute())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != path:
        values = sys.modules.get("prometheus_client.values")
        if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": path}
            os.execve(sys.executable, [sys.executable, "-m", "gxsubmit", *sys.argv[1:]], env)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # Wipe before any value is created: stale files of an earlier run would be summed in.
    if cfg.metrics_dir.exists():
        shutil.rmtree(cfg.metrics_dir)
    cfg.metrics_dir.mkdir(parents=True, exist_ok=True)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def _read_status(path: Path, pid: int) -> tuple[dict[str, Any] | None, float]:
    """The worker's status document and its mtime, or (None, 0) if absent or from another pid."""
    try:
        st = path.stat()
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None, 0.0
    if not isinstance(data, dict) or data.get("pid") != pid:
        return None, 0.0
    return data, st.st_mtime


# --- database thread ------------------------------------------------------------------------


def _has_unroutable(stats: QueueStats, routed: Sequence[str]) -> bool:
    known = set(routed)
    return any(status == "PENDING" and n and ctype not in known
               for (status, ctype), n in stats.by_status_type.items())


class _BeatOnly(Exception):
    """A watcher pass that was due for the fleet heartbeat only (statistics are not due yet)."""


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

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        delay = DB_RETRY_FIRST
        next_stats = 0.0
        fleet = self._fleet
        while not self._stop.is_set():
            wait = STATS_INTERVAL
            try:
                async with self._lock:
                    store = await self._connect()
                    if fleet is not None and fleet.due_in() <= 0:
                        await self._bounded(fleet.beat(await store.connection()))
                    if time.monotonic() < next_stats:  # woken for the heartbeat only
                        raise _BeatOnly
                    stats = await self._bounded(store.stats())
                    routed = list(self._routed_types())
                    n = 0
                    if _has_unroutable(stats, routed):
                        # Only when the statistics show PENDING rows no route serves: an idle
                        # replica does not pay a statement for it every pass. With the fleet registry,
                        # only rows no replica has routed for the grace period fail.
                        if fleet is not None:
                            n = await self._bounded(fleet.sweep(await store.connection(), routed))
                        else:
                            n = await self._bounded(store.fail_unroutable(routed))
                        if n:
                            stats = await self._bounded(store.stats())
                busy = any(stats.by_status.get(s, 0) for s in _UNFINISHED) or (
                    self.stats is not None and self.stats.by_status != stats.by_status)
                if busy:
                    wait = STATS_INTERVAL_BUSY
                if n:
                    self.unroutable_failed += n
                    log.warning("Failed unroutable commands", extra={"count": n, "error_code": "UNROUTABLE"})
                if self.ok is False:
                    log.info("Outbox database reachable again")
                self.stats, self.stats_at = stats, time.time()
                self.ok, self.error = True, None
                delay = DB_RETRY_FIRST
                next_stats = time.monotonic() + wait
            except _BeatOnly:
                pass
            except Exception as exc:  # any DB failure: drop the connection, back off, retry
                self._failed(exc)
                await self._close()
                wait, delay = delay, min(delay * 2, DB_RETRY_CAP)
                next_stats = 0.0
            if next_stats:  # the database answered: sleep until statistics or the heartbeat are due
                wait = max(0.0, next_stats - time.monotonic())
                if fleet is not None:
                    wait = min(wait, fleet.due_in())
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


# --- the supervisor -------------------------------------------------------------------------


class Supervisor:
    """Starts, watches and restarts one worker per identity; see the module docstring."""

    def __init__(self, cfg: Config, catalog: Catalog, identities: Sequence[str]) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.slots: dict[str, Slot] = {
            name: Slot(name, catalog.identities[name]) for name in identities
        }
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.notifier = Notifier.from_environ(os.environ)
        from gxsubmit.fleet import FleetReporter

        self.started_wall = time.time()
        self.fleet = FleetReporter(cfg, lambda: self.catalog, started_at=self.started_wall)
        self.watcher = OutboxWatcher(cfg, lambda: self.catalog.all_types(), self.fleet)
        self.http: HttpServer | None = None
        self.draining = False
        self.drain_deadline = 0.0
        self.stopping_now = False
        self.ready_sent = False
        self.all_ready_logged = False
        self.reload_queue: list[str] = []
        self.reload_current: str | None = None
        self.reload_deadline = 0.0
        self.tls_signature = self._tls_signature()
        self.tls_next_check = 0.0
        self.last_tick = time.monotonic()
        self.last_watchdog = 0.0
        self._snapshot: dict[str, Any] = {}
        self._ready: tuple[bool, dict[str, str]] = (False, {})
        self._lockfile: int | None = None
        # The supervisor's drain budget is the whole drain_timeout; workers get a little less so
        # that there is time to SIGKILL stragglers and release their rows before we are killed.
        budget = cfg.drain_timeout
        self.worker_drain = max(budget - max(1.5, budget * 0.1), budget * 0.5)
        self.kill_after = max(cfg.drain_timeout - 0.5, self.worker_drain)

    # -- lifecycle

    def run(self) -> int:
        from gxsubmit import metrics
        from gxsubmit.httpserver import HttpServer

        self.metrics = metrics
        if not self._lock_runtime_dir():
            return RET_CONFIG
        self._install_signals()
        try:
            self.http = HttpServer(self.cfg.metrics_host, self.cfg.metrics_port, _Probe(self), self._render)
        except OSError as exc:
            log.error(
                "Cannot listen for metrics and probes",
                extra={"host": self.cfg.metrics_host, "port": self.cfg.metrics_port, "error": str(exc)},
            )
            return RET_CONFIG if exc.errno == errno.EADDRINUSE else RET_FAIL
        self.http.start()
        log.info(
            "Metrics server listening on port %d",
            self.http.port,
            extra={"host": self.cfg.metrics_host, "port": self.http.port},
        )
        self.watcher.start()
        log.info(
            "Initializing Fabric clients for all identities",
            extra={"identities": list(self.slots), "worker_id": self.cfg.worker_id},
        )
        for slot in self.slots.values():
            self.spawn(slot)
        try:
            while True:
                self.tick()
                if self.draining and not self.alive_pids():
                    break
                self.wait_for_signal(TICK)
        finally:
            self.shutdown_rest()
        log.info("Supervisor stopped")
        return RET_OK

    def _lock_runtime_dir(self) -> bool:
        """One supervisor per runtime directory: status files and metrics would collide."""
        rd = self.cfg.runtime_dir
        rd.mkdir(parents=True, exist_ok=True)
        fd = os.open(rd / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.error("Another supervisor uses this runtime directory: give each supervisor on a host "
                      "its own GXSUBMIT_WORKER_ID (and GXSUBMIT_RUNTIME_DIR, if set)",
                      extra={"runtime_dir": str(rd), "worker_id": self.cfg.worker_id})
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lockfile = fd
        for stale in rd.glob("worker-*.json"):
            stale.unlink(missing_ok=True)
        return True

    def shutdown_rest(self) -> None:
        """Last step of every exit path: nothing alive, no rows held, endpoints closed."""
        pids = self.alive_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.alive_pids() and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        everyone = [(s.identity, pid) for s in self.slots.values() for pid in s.pids]
        self.release_rows(everyone, timeout=max(1.0, self._time_left()))
        self.notifier.stopping("stopped")
        if self.http is not None:
            self.http.stop()
        self.watcher.stop()
        for slot in self.slots.values():
            status_file(self.cfg.runtime_dir, slot.identity).unlink(missing_ok=True)

    def _time_left(self) -> float:
        if not self.draining:
            return 3.0
        return self.drain_deadline + 0.5 - time.monotonic()

    def release_rows(self, pids: Sequence[tuple[str, int]], timeout: float) -> None:
        owners = [owner_id(self.cfg.worker_id, name, pid) for name, pid in pids]
        if not owners:
            return
        try:
            self.watcher.release(owners).result(timeout)
        except Exception as exc:
            log.warning(
                "Could not release rows of stopped workers; they return when their leases expire",
                extra={"error": f"{type(exc).__name__}: {exc}", "owners": owners},
            )

    # -- signals

    def _install_signals(self) -> None:
        def record(signum: int, frame: object) -> None:
            # NO LOGGING here: a handler may interrupt the logger mid-write.
            self.signals.put(signum)
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

        for sig in _HANDLED:
            signal.signal(sig, record)
            # Let the wake-up pipe interrupt select(); syscalls elsewhere are restarted.
            signal.siginterrupt(sig, False)

    def wait_for_signal(self, timeout: float) -> None:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass

    def handle_signals(self) -> None:
        while True:
            try:
                sig = self.signals.get_nowait()
            except queue.Empty:
                return
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                self.handle_stop(signal.Signals(sig).name)
            elif sig == signal.SIGHUP and not self.draining:
                self.handle_hup()
            # SIGCHLD only wakes the loop; reap() runs on every tick.

    def handle_stop(self, name: str) -> None:
        if self.draining:
            log.warning("Received %s again, stopping immediately", name)
            self.stopping_now = True
            for pid in self.alive_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        log.info(
            "Received %s, shutting down gracefully",
            name,
            extra={"drain_timeout": self.cfg.drain_timeout},
        )
        self.draining = True
        self.drain_deadline = time.monotonic() + self.kill_after
        self.notifier.stopping("draining")
        for slot in self.slots.values():
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)

    def handle_hup(self) -> None:
        """Reload: re-read the catalogue, re-check the wallet, restart workers one at a time."""
        log.info("Received SIGHUP, reloading catalogue and wallet")
        from gxsubmit.catalog import load_catalog

        try:
            catalog = load_catalog(self.cfg.catalog)
            wanted = _select_identities(catalog, self.cfg)
        except Exception as exc:
            log.error("Reload failed, keeping the running configuration", extra={"error": str(exc)})
            return
        self.catalog = catalog
        # Workers started (or restarted) by this reload already run the new catalogue: they are not
        # queued for the rolling restart below.
        fresh: set[str] = set()
        for name in wanted:
            slot = self.slots.get(name)
            if slot is None:
                slot = self.slots[name] = Slot(name, catalog.identities[name])
                log.info("Identity joined the catalogue, starting its worker", extra={"worker": name})
            slot.role = catalog.identities[name]
            if slot.retiring:
                # Removed by an earlier reload and now wanted again.
                slot.retiring = False
                log.info("Identity is back in the catalogue", extra={"worker": name})
                if slot.pid is not None:
                    # Still draining after its SIGTERM: on_exit respawns it at once.
                    slot.reload_requested = True
                    fresh.add(name)
            if slot.pid is None and (not slot.pids or slot.state is State.STOPPED):
                self.spawn(slot)  # a new identity, or one retired earlier whose worker has exited
                fresh.add(name)
        for name, slot in self.slots.items():
            if name not in wanted and not slot.retiring:
                slot.retiring = True
                log.info("Identity left the catalogue, stopping its worker", extra={"worker": name})
                if slot.pid is not None:
                    os.kill(slot.pid, signal.SIGTERM)
        queue_: list[str] = []
        for name in wanted:
            slot = self.slots[name]
            problem = self.check_wallet(slot)
            if slot.state in (State.CONFIG_ERROR, State.BACKOFF):
                self._retry_now(slot, time.monotonic())
            elif problem is not None:
                log.error(
                    "Wallet check failed on reload; keeping the running worker",
                    extra={"worker": name, "error": problem},
                )
            elif slot.pid is not None and name not in fresh:
                queue_.append(name)
        self.reload_queue = queue_
        self.reload_current = None

    def _tls_signature(self) -> str | None:
        from gxsubmit.filesig import files_signature  # not gxsubmit.wallet: that loads cryptography

        paths = self.cfg.tls_paths
        return None if paths is None else files_signature(paths)

    def watch_tls(self) -> None:
        """Restart the workers one at a time when the gateway TLS files change.

        A gRPC channel reads its CA and client pair once: after a CA or client certificate rotation
        (a renewed Kubernetes Secret, certbot) the running workers would never reconnect. Files that
        do not validate are refused and the running workers kept, as a failed SIGHUP reload is.
        """
        now = time.monotonic()
        if self.draining or now < self.tls_next_check:
            return
        self.tls_next_check = now + TLS_CHECK_INTERVAL
        signature = self._tls_signature()
        if signature == self.tls_signature:
            return
        self.tls_signature = signature
        from gxsubmit.wallet import WalletError, check_tls_files

        paths = self.cfg.tls_paths
        assert paths is not None
        try:
            check_tls_files(*paths)
        except WalletError as exc:
            log.error("Changed gateway TLS files rejected; keeping the running workers",
                      extra={"error": str(exc)})
            return
        # A worker already stopping for a reload reads the new files when it is respawned.
        names = [n for n, s in self.slots.items() if s.pid is not None and not s.retiring
                 and not s.reload_requested and n not in self.reload_queue]
        log.info("Gateway TLS files changed; restarting workers one at a time to load them",
                 extra={"workers": names})
        self.reload_queue.extend(names)
        for slot in self.slots.values():
            if slot.state is State.CONFIG_ERROR and not slot.retiring:  # perhaps a missing TLS file
                self._retry_now(slot, now)

    def _retry_now(self, slot: Slot, now: float) -> None:
        """Respawn at the next tick (manage); an identity in configuration error gets another try."""
        slot.delay, slot.respawn_at = 0.0, now
        if slot.state is State.CONFIG_ERROR:
            slot.state, slot.reason = State.BACKOFF, None
            log.info("Retrying identity after configuration error", extra={"worker": slot.identity})

    def check_wallet(self, slot: Slot) -> str | None:
        from gxsubmit.wallet import WalletError, load_identity

        try:
            load_identity(self.cfg.wallet, slot.identity, msp_id=self.cfg.msp_id, expected_role=slot.role)
        except WalletError as exc:
            return str(exc)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    # -- children

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(var, None)
        env.update(self.cfg.to_env())
        env["GXSUBMIT_DRAIN_TIMEOUT"] = repr(self.worker_drain)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.cfg.metrics_dir.absolute())
        return env

    def worker_argv(self, identity: str) -> list[str]:
        return [sys.executable, "-m", "gxsubmit", "worker", "--identity", identity]

    def spawn(self, slot: Slot) -> None:
        argv = self.worker_argv(slot.identity)
        # Children should not see Ctrl-C from the terminal: the supervisor turns it into one
        # SIGTERM (a worker getting both would take the second as "stop now"). An ignored
        # signal stays ignored across exec; handled ones are reset to default by exec.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        old_int = signal.getsignal(signal.SIGINT)
        ignore_int = signal.SIGINT not in signal.sigpending()
        try:
            if ignore_int:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            pid = os.posix_spawn(
                argv[0],
                argv,
                self.child_env(),
                setsigmask=set(),
                setsigdef=(signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT, signal.SIGPIPE),
            )
        except OSError as exc:
            log.error("Could not start worker", extra={"worker": slot.identity, "error": str(exc)})
            self._schedule_restart(slot, time.monotonic())
            return
        finally:
            if ignore_int:
                signal.signal(signal.SIGINT, old_int)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        now = time.monotonic()
        slot.pid, slot.state = pid, State.STARTING
        slot.pids.append(pid)
        slot.spawned_at, slot.spawned_wall = now, time.time()
        slot.beat = slot.spawned_wall
        slot.status, slot.abort_sent, slot.kill_sent = None, None, False
        slot.reload_requested = False
        log.info("Booting worker", extra={"worker": slot.identity, "worker_pid": pid})

    def alive_pids(self) -> list[int]:
        return [s.pid for s in self.slots.values() if s.pid is not None]

    def reap(self) -> None:
        """Collect every exited child, ours or not (we may be PID 1 in a container)."""
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(wstatus)
            slot = next((s for s in self.slots.values() if s.pid == pid), None)
            if slot is None:
                log.debug("Reaped a stray child", extra={"child_pid": pid, "exit": _exit_text(code)})
                continue
            self.metrics.mark_process_dead(pid)
            self.on_exit(slot, pid, code)

    def on_exit(self, slot: Slot, pid: int, code: int) -> None:
        now = time.monotonic()
        uptime = now - slot.spawned_at
        slot.pid, slot.last_exit = None, _exit_text(code)
        status, _ = _read_status(status_file(self.cfg.runtime_dir, slot.identity), pid)
        last_error = (status or slot.status or {}).get("last_error")
        slot.status = None
        extra = {"worker": slot.identity, "worker_pid": pid, "exit": slot.last_exit}
        extra["uptime_s"] = round(uptime, 1)
        # Hand rows back now instead of waiting for their leases: the worker cannot finish them.
        # A graceful exit has released them already; this catches crashes and SIGKILLs.
        if code != 0:
            # A crash or a watchdog kill counts against the rows the worker held (WORKER_CRASH at the
            # limit); a worker stopped by us (drain, retire, reload) or one that could not start did not
            # crash because of a row.
            crashed = not (self.draining or slot.retiring or slot.reload_requested or code == RET_CONFIG)
            self.watcher.release([owner_id(self.cfg.worker_id, slot.identity, pid)],
                                 self.cfg.max_worker_crashes if crashed else None, slot.identity)
        if self.draining or slot.retiring:
            slot.state = State.STOPPED
            level = log.info if code == 0 else log.warning
            level("Worker stopped", extra=extra)
            return
        if code == RET_CONFIG:
            slot.state = State.CONFIG_ERROR
            slot.reason = last_error or self.check_wallet(slot) or "see the worker's log"
            log.error(
                "Worker has a configuration error; not restarting it until SIGHUP",
                extra={**extra, "error": slot.reason},
            )
            return
        if slot.reload_requested:
            slot.delay = 0.0
            slot.state, slot.respawn_at = State.BACKOFF, now
            log.info("Worker stopped for reload", extra=extra)
            return
        if code == -signal.SIGKILL:
            log.error("Worker was killed (perhaps out of memory?)", extra=extra)
        else:
            log.error("Worker died", extra={**extra, "error": last_error})
        if uptime >= BACKOFF_RESET_AFTER:
            slot.delay = 0.0
        self._schedule_restart(slot, now)
        slot.restarts += 1
        self.metrics.WORKER_RESTARTS.labels(slot.identity).inc()

    def _schedule_restart(self, slot: Slot, now: float) -> None:
        slot.delay = BACKOFF_FIRST if slot.delay <= 0 else min(slot.delay * 2, BACKOFF_CAP)
        slot.state, slot.respawn_at = State.BACKOFF, now + slot.delay
        log.info("Restarting worker after backoff", extra={"worker": slot.identity, "delay_s": slot.delay})

    def manage(self) -> None:
        """Restart dead workers whose backoff has passed (and whose rows were handed back)."""
        if self.draining:
            return
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.state is State.BACKOFF and not slot.retiring and now >= slot.respawn_at:
                self.spawn(slot)

    def watch(self) -> None:
        """Read heartbeats; SIGABRT then SIGKILL a worker that stopped writing them."""
        wall = time.time()
        for slot in self.slots.values():
            if slot.pid is None:
                continue
            status, mtime = _read_status(status_file(self.cfg.runtime_dir, slot.identity), slot.pid)
            if status is not None:
                slot.status, slot.beat = status, max(slot.beat, mtime)
                if status.get("gateway_ok") and slot.state is State.STARTING:
                    slot.state, slot.ready_once = State.RUNNING, True
            if self.draining:
                continue
            silent = wall - slot.beat
            # Until its first heartbeat a worker is importing gRPC and loading its key, which can take
            # a while on a busy host: allow at least BOOT_TIMEOUT for that.
            limit = self.cfg.heartbeat_timeout if slot.status is not None else max(
                self.cfg.heartbeat_timeout, BOOT_TIMEOUT)
            if slot.abort_sent is None and silent > limit:
                log.error(
                    "Worker timed out (no heartbeat), aborting it",
                    extra={"worker": slot.identity, "worker_pid": slot.pid, "silent_s": round(silent, 1)},
                )
                slot.abort_sent = time.monotonic()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGABRT)
            elif slot.abort_sent is not None and not slot.kill_sent:
                if time.monotonic() - slot.abort_sent < ABORT_GRACE:
                    continue
                slot.kill_sent = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)

    def rolling_restart(self) -> None:
        """SIGHUP: restart one worker at a time, the next once the new one is connected."""
        if self.draining:
            return
        now = time.monotonic()
        if self.reload_current is not None:
            slot = self.slots.get(self.reload_current)
            done = slot is None or slot.retiring or slot.state in (State.RUNNING, State.CONFIG_ERROR)
            if not (done and (slot is None or not slot.reload_requested)) and now < self.reload_deadline:
                return
            self.reload_current = None
        while self.reload_queue:
            name = self.reload_queue.pop(0)
            slot = self.slots.get(name)
            if slot is None or slot.pid is None or slot.retiring:
                continue
            log.info("Restarting worker to apply the reload", extra={"worker": name, "worker_pid": slot.pid})
            slot.reload_requested = True
            slot.ready_once = False
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGTERM)
            self.reload_current = name
            self.reload_deadline = now + self.cfg.drain_timeout + self.cfg.heartbeat_timeout
            return

    # -- readiness, metrics, snapshot

    def readiness(self) -> tuple[bool, dict[str, str]]:
        reasons: dict[str, str] = {}
        now = time.monotonic()
        for name, slot in sorted(self.slots.items()):
            if slot.retiring:
                continue
            st = slot.status or {}
            error = st.get("last_error")
            suffix = f": {error}" if error else ""
            if self.draining:
                reasons[name] = "draining"
            elif slot.state is State.CONFIG_ERROR:
                reasons[name] = f"configuration error ({slot.last_exit}): {slot.reason}"
            elif slot.state is State.BACKOFF:
                reasons[name] = (
                    f"worker not running ({slot.last_exit or 'not started'}), "
                    f"restart in {max(0.0, slot.respawn_at - now):.1f}s"
                )
            elif not st:
                reasons[name] = "starting"
            elif not st.get("db_ok"):
                reasons[name] = "database unavailable" + suffix
            elif not st.get("gateway_ok"):
                reasons[name] = "gateway unavailable" + suffix
            elif st.get("breaker_open"):
                reasons[name] = "circuit breaker open" + suffix
            elif st.get("draining"):
                reasons[name] = "draining"
            else:
                reasons[name] = "ok"
        if self.watcher.ok is False:
            reasons["outbox"] = f"database unavailable: {self.watcher.error}"
        ok = bool(reasons) and all(r == "ok" for r in reasons.values())
        return ok, reasons

    def announce(self) -> None:
        """READY=1 and the operators' log line once every worker that can start is connected."""
        live = [s for s in self.slots.values() if not s.retiring]
        if self.ready_sent or self.draining or not live:
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
        self.notifier.ready(f"{len(connected)}/{len(live)} identities connected")
        self.ready_sent = True
        log.info("Outbox submitter worker started successfully", extra={"identities": connected})

    def publish(self) -> None:
        """Refresh the supervisor's gauges and the snapshot the HTTP thread reads."""
        m = self.metrics
        for slot in self.slots.values():
            up = slot.pid is not None and slot.state is State.RUNNING and not slot.retiring
            m.WORKER_UP.labels(slot.identity).set(1 if up else 0)
        stats = self.watcher.stats
        if stats is not None:
            for status in sorted(set(STATUSES) | set(stats.by_status)):
                m.OUTBOX_ROWS.labels(status).set(stats.by_status.get(status, 0))
            m.OLDEST_PENDING_AGE.set(stats.oldest_pending_age_s or 0.0)
        self._ready = self.readiness()
        self._snapshot = self.build_status()
        self.fleet.observe(self._snapshot["workers"], self.watcher.ok, self.watcher.error)

    def build_status(self) -> dict[str, Any]:
        workers: dict[str, Any] = {}
        for name, slot in sorted(self.slots.items()):
            st = slot.status or {}
            workers[name] = {
                "pid": slot.pid,
                "state": slot.state.value,
                "role": slot.role,
                "restarts": slot.restarts,
                "last_exit": slot.last_exit,
                "reason": slot.reason,
                "db_ok": st.get("db_ok"),
                "gateway_ok": st.get("gateway_ok"),
                "breaker_open": st.get("breaker_open"),
                "in_flight": st.get("in_flight"),
                "committed": st.get("committed"),
                "failed": st.get("failed"),
                "last_error": st.get("last_error"),
                "draining": st.get("draining"),
                "wakeups": st.get("wakeups"),
                "heartbeat_age_s": round(time.time() - slot.beat, 3) if slot.pid is not None else None,
            }
        stats = self.watcher.stats
        queue_doc: dict[str, Any] = {
            "db_ok": self.watcher.ok,
            "error": self.watcher.error,
            "updated_at": self.watcher.stats_at,
            "unroutable_failed": self.watcher.unroutable_failed,
        }
        if stats is not None:
            queue_doc.update(
                by_status=dict(stats.by_status),
                by_status_type={f"{st}/{ty}": n for (st, ty), n in stats.by_status_type.items()},
                oldest_pending_age_s=stats.oldest_pending_age_s,
                failed_by_code=dict(stats.failed_by_code),
                retrying_by_code=dict(stats.retrying_by_code),
                committed_estimated=stats.committed_estimated,
            )
        ready, reasons = self._ready
        return {
            "supervisor": {
                "pid": os.getpid(),
                "worker_id": self.cfg.worker_id,
                "started_at": self.started_wall,
                "draining": self.draining,
                "ready": ready,
                "readiness": reasons,
            },
            "workers": workers,
            "queue": queue_doc,
            # One line each, e.g. a LISTEN behind a transaction pooler (workers poll instead).
            "warnings": sorted({str(s.status["wakeup_warning"]) for s in self.slots.values()
                                if s.status and s.status.get("wakeup_warning")}),
        }

    def _render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST

        return self.metrics.render_latest(), CONTENT_TYPE_LATEST

    def tick(self) -> None:
        self.handle_signals()
        self.reap()
        self.watch()
        self.manage()
        self.watch_tls()
        self.rolling_restart()
        self.announce()
        self.publish()
        now = time.monotonic()
        self.last_tick = now
        wd = self.notifier.watchdog_interval
        if wd is not None and now - self.last_watchdog >= wd:
            self.notifier.watchdog()
            self.last_watchdog = now
        if self.draining and now >= self.drain_deadline:
            stragglers = self.alive_pids()
            if stragglers and not self.stopping_now:
                log.warning("Drain timeout reached, killing workers", extra={"worker_pids": stragglers})
                self.stopping_now = True
                for pid in stragglers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


class _Probe:
    """Read-only view for the HTTP thread: only swaps of immutable snapshots cross threads."""

    def __init__(self, sup: Supervisor) -> None:
        self._sup = sup

    def healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self._sup.last_tick
        if age > HEALTH_STALE:
            return False, f"supervisor loop stalled for {age:.1f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, Mapping[str, str]]:
        return self._sup._ready

    def status(self) -> Mapping[str, Any]:
        return self._sup._snapshot


def _select_identities(catalog: Catalog, cfg: Config) -> list[str]:
    from gxsubmit.config import ConfigError

    names = list(catalog.identities)
    if cfg.identities is not None:
        unknown = [n for n in cfg.identities if n not in catalog.identities]
        if unknown:
            raise ConfigError(
                f"invalid setting GXSUBMIT_IDENTITIES: {', '.join(unknown)} not in the catalogue "
                f"(known: {', '.join(names)})"
            )
        names = [n for n in names if n in cfg.identities]
    if not names:
        raise ConfigError("the catalogue routes no command to any identity")
    return names


def run(cfg: Config) -> int:
    """Entry point of ``gxsubmit supervise``; returns the process exit code."""
    no_core_dumps()  # holds the database password (and reads the wallet's files)
    _prepare_metrics_env(cfg)
    setup_logging(cfg.log_level, process="supervisor")
    log.info("Starting outbox submitter supervisor", extra={"worker_id": cfg.worker_id})
    try:
        cfg.require("database_url")
        from gxsubmit.catalog import load_catalog

        catalog = load_catalog(cfg.catalog)
        identities = _select_identities(catalog, cfg)
    except Exception as exc:  # ConfigError, CatalogError: one line, no restart loop
        log.error("Configuration error, not starting", extra={"error": str(exc)})
        return RET_CONFIG
    from gxsubmit.dbroute import tls_preflight

    problem = tls_preflight(cfg)  # a wrong CA or host name does not heal by retrying
    if problem is not None:
        log.error("Configuration error, not starting", extra={"error": problem})
        return RET_CONFIG
    return Supervisor(cfg, catalog, identities).run()
