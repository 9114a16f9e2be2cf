"""Reload: SIGHUP re-reads the catalogue and the wallet, a TLS file change is noticed, and both
restart the workers one at a time (:class:`RollingRestart`) so the service never loses every
identity at once.

:class:`RollingRestart` is the state machine alone, pure (it is handed the clock's reading and the
slots, and answers which worker to stop), so it is unit-tested without processes; :class:`Reloader`
wires it to the supervisor (catalogue, wallet checks, signals).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from gxsubmit.config import Config
from gxsubmit.log import get_logger
from gxsubmit.supervisor.slot import Slot, State

if TYPE_CHECKING:
    from gxsubmit.catalog import Catalog
    from gxsubmit.supervisor.arbiter import Supervisor

__all__ = ["TLS_CHECK_INTERVAL", "Reloader", "RollingRestart", "check_wallet", "select_identities"]

log = get_logger("gxsubmit.supervisor")

#: How often the gateway TLS files are checked for a change (three stat calls).
TLS_CHECK_INTERVAL = 3.0


class RollingRestart:
    """Which worker to stop next so that a reload reaches every worker, one at a time.

    A worker is stopped (and respawned at once by the arbiter); the next one only when the new
    process is connected, has given up with a configuration error, has left the catalogue, or
    ``settle_s`` (drain plus heartbeat timeout) has passed, so a worker that never comes back does
    not stall the reload of the others.
    """

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.queue: list[str] = []
        self.current: str | None = None  # the identity stopped last, until its successor settles
        self.deadline = 0.0

    def restart(self, names: Iterable[str]) -> None:
        """A new reload: these workers, in order; whatever an earlier reload had left is dropped."""
        self.queue = list(names)
        self.current = None

    def add(self, names: Iterable[str]) -> None:
        """More workers to restart after those already queued (a TLS change during a reload)."""
        self.queue.extend(names)

    def queued(self, name: str) -> bool:
        return name in self.queue

    def _settled(self, now: float, slots: Mapping[str, Slot]) -> bool:
        if self.current is None:
            return True
        slot = slots.get(self.current)
        done = slot is None or slot.retiring or slot.state in (State.RUNNING, State.CONFIG_ERROR)
        return (done and (slot is None or not slot.reload_requested)) or now >= self.deadline

    def next(self, now: float, slots: Mapping[str, Slot]) -> Slot | None:
        """The slot whose worker to stop now, marked as stopped for a reload; None: nothing to do yet."""
        if not self._settled(now, slots):
            return None
        self.current = None
        while self.queue:
            name = self.queue.pop(0)
            slot = slots.get(name)
            if slot is None or slot.pid is None or slot.retiring:
                continue  # gone, dead (it restarts with the new settings anyway) or leaving
            slot.reload_requested = True
            slot.ready_once = False
            self.current = name
            self.deadline = now + self.settle_s
            return slot
        return None


def select_identities(catalog: Catalog, cfg: Config) -> list[str]:
    """The identities this supervisor runs: the catalogue's, narrowed by GXSUBMIT_IDENTITIES."""
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


def check_wallet(cfg: Config, slot: Slot) -> str | None:
    """Why ``slot``'s identity cannot start from the wallet as it is now, or None."""
    from gxsubmit.wallet import WalletError, load_identity

    try:
        load_identity(cfg.wallet, slot.identity, msp_id=cfg.msp_id, expected_role=slot.role)
    except WalletError as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def retry_now(slot: Slot, now: float) -> None:
    """Respawn at the next tick (manage); an identity in configuration error gets another try."""
    slot.delay, slot.respawn_at = 0.0, now
    if slot.state is State.CONFIG_ERROR:
        slot.state, slot.reason = State.BACKOFF, None
        log.info("Retrying identity after configuration error", extra={"worker": slot.identity})


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Reloader:
    """SIGHUP and TLS rotation for one :class:`~gxsubmit.supervisor.arbiter.Supervisor`."""

    def __init__(self, sup: Supervisor, *, clock: Callable[[], float] = time.monotonic,
                 kill: Callable[[int, signal.Signals], None] | None = None,
                 wallet_problem: Callable[[Config, Slot], str | None] = check_wallet) -> None:
        self.sup = sup
        self.cfg: Config = sup.cfg
        self.clock = clock  # and the rest for unit tests: no processes, no wallet on disk
        self.kill = kill or _kill
        self.wallet_problem = wallet_problem
        self.rolling = RollingRestart(self.cfg.drain_timeout + self.cfg.heartbeat_timeout)
        self.tls_signature = self._tls_signature()
        self.tls_next_check = 0.0

    def handle_hup(self) -> None:
        """Reload: re-read the catalogue, re-check the wallet, restart workers one at a time."""
        log.info("Received SIGHUP, reloading catalogue and wallet")
        from gxsubmit.catalog import load_catalog

        try:
            catalog = load_catalog(self.cfg.catalog)
            wanted = select_identities(catalog, self.cfg)
        except Exception as exc:
            log.error("Reload failed, keeping the running configuration", extra={"error": str(exc)})
            return
        self.sup.catalog = catalog
        fresh = self._join(catalog, wanted)
        self._retire(wanted)
        self.rolling.restart(self._to_restart(wanted, fresh))

    def _join(self, catalog: Catalog, wanted: list[str]) -> set[str]:
        """Start workers of identities new to the catalogue (or back in it); those run the new
        catalogue already, so they are returned to be left out of the rolling restart."""
        slots = self.sup.slots
        fresh: set[str] = set()
        for name in wanted:
            slot = slots.get(name)
            if slot is None:
                slot = slots[name] = Slot(name, catalog.identities[name])
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
                self.sup.spawn(slot)  # a new identity, or one retired earlier whose worker has exited
                fresh.add(name)
        return fresh

    def _retire(self, wanted: list[str]) -> None:
        for name, slot in self.sup.slots.items():
            if name not in wanted and not slot.retiring:
                slot.retiring = True
                log.info("Identity left the catalogue, stopping its worker", extra={"worker": name})
                if slot.pid is not None:
                    self.kill(slot.pid, signal.SIGTERM)

    def _to_restart(self, wanted: list[str], fresh: set[str]) -> list[str]:
        names: list[str] = []
        for name in wanted:
            slot = self.sup.slots[name]
            problem = self.wallet_problem(self.cfg, slot)
            if slot.state in (State.CONFIG_ERROR, State.BACKOFF):
                retry_now(slot, self.clock())
            elif problem is not None:
                log.error(
                    "Wallet check failed on reload; keeping the running worker",
                    extra={"worker": name, "error": problem},
                )
            elif slot.pid is not None and name not in fresh:
                names.append(name)
        return names

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
        now = self.clock()
        if self.sup.draining or now < self.tls_next_check:
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
        names = [n for n, s in self.sup.slots.items() if s.pid is not None and not s.retiring
                 and not s.reload_requested and not self.rolling.queued(n)]
        log.info("Gateway TLS files changed; restarting workers one at a time to load them",
                 extra={"workers": names})
        self.rolling.add(names)
        for slot in self.sup.slots.values():
            if slot.state is State.CONFIG_ERROR and not slot.retiring:  # perhaps a missing TLS file
                retry_now(slot, now)

    def rolling_restart(self) -> None:
        """Stop the next worker of a reload once the previous one is back (see RollingRestart)."""
        if self.sup.draining:
            return
        slot = self.rolling.next(self.clock(), self.sup.slots)
        if slot is None or slot.pid is None:
            return
        log.info("Restarting worker to apply the reload",
                 extra={"worker": slot.identity, "worker_pid": slot.pid})
        self.kill(slot.pid, signal.SIGTERM)
