"""The arbiter: spawn one worker per identity, reap them, kill hung ones, restart with backoff.

The shape follows gunicorn's arbiter. Signal handlers only record the signal (a queue plus a
wake-up pipe); the main loop acts on it, reaps children, kills hung workers and restarts dead ones
with backoff. Workers are started by ``posix_spawn`` of a fresh interpreter (``python -m gxsubmit
worker``), never by fork: gRPC is not fork-safe, and a fresh process also gives every worker its
own key, channel and DB connection.

Everything else the loop drives lives in modules of its own: reload (:mod:`.reload`), readiness
and ``/status`` (:mod:`.health`), the supervisor's database thread (:mod:`.watcher`), row release
(:mod:`.release`) and the runtime-directory lock (:mod:`.rundir`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING

from gxsubmit.config import Config
from gxsubmit.exitcodes import RET_CONFIG, RET_FAIL, RET_OK
from gxsubmit.log import get_logger, setup_logging
from gxsubmit.sdnotify import Notifier
from gxsubmit.secrets import no_core_dumps
from gxsubmit.supervisor.health import Health, Probe
from gxsubmit.supervisor.release import release_exited, release_rows
from gxsubmit.supervisor.reload import Reloader, check_wallet, select_identities
from gxsubmit.supervisor.rundir import lock_runtime_dir
from gxsubmit.supervisor.slot import Slot, State, exit_text
from gxsubmit.supervisor.watcher import OutboxWatcher
from gxsubmit.workerstatus import read_status, status_path

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

    from gxsubmit.catalog import Catalog
    from gxsubmit.httpserver import HttpServer

__all__ = ["Supervisor", "run"]

log = get_logger("gxsubmit.supervisor")

#: Main loop period: how often children, heartbeats and readiness are looked at.
TICK = 0.25
#: Restart backoff: first delay, cap, and the healthy uptime after which it resets
#: (docs/design.md#process-model).
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0
BACKOFF_RESET_AFTER = 60.0
#: The first heartbeat of a new worker may take this long (interpreter start, gRPC import, key load).
BOOT_TIMEOUT = 30.0
#: After SIGABRT a hung worker gets this long to dump its stacks and die before SIGKILL.
ABORT_GRACE = 5.0

_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT)


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


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Supervisor:
    """Starts, watches and restarts one worker per identity; see the module docstring."""

    metrics: ModuleType  # gxsubmit.metrics, imported by run() once the metrics directory is set

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
        self.reloader = Reloader(self)
        self.health = Health(self)
        self.http: HttpServer | None = None
        self.draining = False
        self.drain_deadline = 0.0
        self.stopping_now = False
        self.last_tick = time.monotonic()
        self.last_watchdog = 0.0
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
        self._lockfile = lock_runtime_dir(self.cfg.runtime_dir, self.cfg.worker_id)
        if self._lockfile is None:
            return RET_CONFIG
        self._install_signals()
        try:
            self.http = HttpServer(self.cfg.metrics_host, self.cfg.metrics_port, Probe(self), self._render)
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

    def tick(self) -> None:
        self.handle_signals()
        self.reap_workers()
        self.read_heartbeats()
        self.kill_hung_workers()
        self.manage_workers()
        self.reloader.watch_tls()
        self.reloader.rolling_restart()
        self.health.announce()
        self.health.publish()
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
                    _kill(pid, signal.SIGKILL)

    def shutdown_rest(self) -> None:
        """Last step of every exit path: nothing alive, no rows held, endpoints closed."""
        for pid in self.alive_pids():
            _kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.alive_pids() and time.monotonic() < deadline:
            self.reap_workers()
            time.sleep(0.02)
        everyone = [(s.identity, pid) for s in self.slots.values() for pid in s.pids]
        release_rows(self.watcher, self.cfg.worker_id, everyone, timeout=max(1.0, self._time_left()))
        self.notifier.stopping("stopped")
        if self.http is not None:
            self.http.stop()
        self.watcher.stop()
        for slot in self.slots.values():
            status_path(self.cfg.runtime_dir, slot.identity).unlink(missing_ok=True)

    def _time_left(self) -> float:
        if not self.draining:
            return 3.0
        return self.drain_deadline + 0.5 - time.monotonic()

    def _render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST

        return self.metrics.render_latest(), CONTENT_TYPE_LATEST

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
                self.reloader.handle_hup()
            # SIGCHLD only wakes the loop; reap_workers() runs on every tick.

    def handle_stop(self, name: str) -> None:
        if self.draining:
            log.warning("Received %s again, stopping immediately", name)
            self.stopping_now = True
            for pid in self.alive_pids():
                _kill(pid, signal.SIGKILL)
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
                _kill(slot.pid, signal.SIGTERM)

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

    def reap_workers(self) -> None:
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
                log.debug("Reaped a stray child", extra={"child_pid": pid, "exit": exit_text(code)})
                continue
            self.metrics.mark_process_dead(pid)
            self.on_exit(slot, pid, code)

    def on_exit(self, slot: Slot, pid: int, code: int) -> None:
        now = time.monotonic()
        uptime = now - slot.spawned_at
        slot.pid, slot.last_exit = None, exit_text(code)
        status, _ = read_status(status_path(self.cfg.runtime_dir, slot.identity), pid)
        last = status or slot.status
        last_error = last.last_error if last is not None else None
        slot.status = None
        extra = {"worker": slot.identity, "worker_pid": pid, "exit": slot.last_exit}
        extra["uptime_s"] = round(uptime, 1)
        release_exited(self.watcher, self.cfg, slot.identity, pid, code,
                       stopped_by_us=self.draining or slot.retiring or slot.reload_requested)
        if self.draining or slot.retiring:
            slot.state = State.STOPPED
            level = log.info if code == 0 else log.warning
            level("Worker stopped", extra=extra)
            return
        if code == RET_CONFIG:
            slot.state = State.CONFIG_ERROR
            slot.reason = last_error or check_wallet(self.cfg, slot) or "see the worker's log"
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

    def manage_workers(self) -> None:
        """Restart dead workers whose backoff has passed (and whose rows were handed back)."""
        if self.draining:
            return
        now = time.monotonic()
        for slot in self.slots.values():
            if slot.state is State.BACKOFF and not slot.retiring and now >= slot.respawn_at:
                self.spawn(slot)

    def read_heartbeats(self) -> None:
        """Take in each worker's status file; a worker is RUNNING once it reports a connected gateway."""
        for slot in self.slots.values():
            if slot.pid is None:
                continue
            status, mtime = read_status(status_path(self.cfg.runtime_dir, slot.identity), slot.pid)
            if status is not None:
                slot.status, slot.beat = status, max(slot.beat, mtime)
                if status.gateway_ok and slot.state is State.STARTING:
                    slot.state, slot.ready_once = State.RUNNING, True

    def kill_hung_workers(self) -> None:
        """SIGABRT a worker that stopped writing heartbeats, then SIGKILL it after ABORT_GRACE."""
        if self.draining:
            return
        wall = time.time()
        for slot in self.slots.values():
            if slot.pid is None:
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
                _kill(slot.pid, signal.SIGABRT)
            elif slot.abort_sent is not None and not slot.kill_sent:
                if time.monotonic() - slot.abort_sent < ABORT_GRACE:
                    continue
                slot.kill_sent = True
                _kill(slot.pid, signal.SIGKILL)


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
        identities = select_identities(catalog, cfg)
    except Exception as exc:  # ConfigError, CatalogError: one line, no restart loop
        log.error("Configuration error, not starting", extra={"error": str(exc)})
        return RET_CONFIG
    from gxsubmit.dbroute import tls_preflight

    problem = tls_preflight(cfg)  # a wrong CA or host name does not heal by retrying
    if problem is not None:
        log.error("Configuration error, not starting", extra={"error": problem})
        return RET_CONFIG
    return Supervisor(cfg, catalog, identities).run()
