"""``gxsubmit worker --identity NAME``: one Fabric identity's worker process.

One uvloop event loop; one database connection for claims and completions (through
:class:`~gxsubmit.dblink.DbLink`, which survives outages) plus a LISTEN connection; one gRPC
channel to the gateway; the identity's key. Tasks:

* claim loop — claims only the command types routed to this identity, as many as there are free
  in-flight slots (``max_in_flight``, at most ``batch_size`` per statement), woken by NOTIFY with a
  slow jittered poll as fallback; paused while the database is down or the breaker is open;
* one task per claimed command (:mod:`gxsubmit.pipeline`), so hundreds of transactions wait for
  commit at once;
* lease renewal (every lease/3, one statement for all held rows; a lost lease cancels the job);
* batched completions (mark_submitted_tx / mark_committed); per-command metrics are accumulated in
  memory and written to the prometheus mmap files once per committed batch and every 0.5 s;
* heartbeat: ``<runtime_dir>/worker-<identity>.json`` written atomically every heartbeat interval;
* wallet watch: a rotated certificate/key is validated and used for new attempts, without restart.

Shutdown order (SIGTERM/SIGINT; the handler only sets an event, the main task acts):

1. stop claiming;
2. cancel jobs that have not reached Submit and ``release`` them at once (no attempt counted);
3. let submitted jobs wait for their commit until ``drain_timeout`` (the commit stream keeps running
   until step 5, so these waits are still answered from blocks);
4. cancel what is left and ``release`` it too: its nonce stays in the row, so the next holder
   re-endorses the same tx id and duplicate detection resolves it — exactly once still holds;
5. flush batched completion writes, stop the commit streams, then close the LISTEN connection, the
   gRPC channel and the database connection; write a final status file; exit 0.

A second signal skips the waiting in 3 (cancel everything, release quickly, exit). After a graceful
exit no row is left CLAIMED/SUBMITTED by this worker (unless the database itself is unreachable;
then the leases expire and any worker takes the rows over, counting an attempt).

The parts are built before any of this (:mod:`gxsubmit.workerparts`; the checks before the loop:
:mod:`gxsubmit.workerboot`); this module runs them in the order above. The claim loop and the jobs in
flight: :mod:`gxsubmit.claimloop`; the status file: :mod:`gxsubmit.statusboard`.

Exit codes: 0 drained; 78 configuration problem (catalogue, identity/role, wallet, TLS files);
1 anything unexpected.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from typing import Any

from gxsubmit.backoff import Backoff
from gxsubmit.claimloop import Claimer
from gxsubmit.config import Config
from gxsubmit.dblink import DbUnavailable
from gxsubmit.exitcodes import RET_CONFIG, RET_FAIL, RET_OK
from gxsubmit.fabric import FabricError, SigningIdentity
from gxsubmit.job import Job, Stage
from gxsubmit.log import setup_logging
from gxsubmit.pipeline import Pipeline
from gxsubmit.secrets import no_core_dumps
from gxsubmit.txid import TxIdDeriver
from gxsubmit.wallet import WalletError, load_identity, wallet_signature
from gxsubmit.workerboot import Boot, ConfigProblem, boot
from gxsubmit.workerparts import WorkerParts, build_parts, build_pipeline

__all__ = ["Worker", "run"]

log = logging.getLogger("gxsubmit.worker")

_WALLET_CHECK_S = 3.0
_GC_GEN0_THRESHOLD = 10_000  # CPython's default is 700
#: With no statement answered for this long, the worker sends a ping so a dead link shows in /readyz
#: (within this + db_deadline + a heartbeat) even when idle; costs 1/5 statement/s per idle worker.
_DB_PROBE_QUIET_S = 5.0
_METRICS_FLUSH_S = 0.5  # buffered per-command metrics reach the mmap files at least this often


def _handled_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM always; SIGINT only if it was not ignored at process start (the supervisor spawns
    workers with SIGINT ignored so a terminal Ctrl-C reaches only the supervisor)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, signal.SIGINT)



def run(cfg: Config, identity: str) -> int:
    """Entry point of ``gxsubmit worker --identity NAME``."""
    no_core_dumps()  # before the signing key and the client TLS key are read
    setup_logging(cfg.log_level, process="worker", identity=identity)
    try:
        b = boot(cfg, identity)
    except ConfigProblem as exc:
        log.error("Worker configuration error: %s", exc, extra={"error": str(exc)})
        return RET_CONFIG
    import uvloop

    # Everything loaded so far (modules, catalogue, protobuf descriptors) lives for the whole process:
    # keep it out of the collector's scans, and collect the young generation less often (every
    # command allocates a few hundred short-lived objects, freed by reference counting anyway).
    gc.freeze()
    gc.set_threshold(_GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    try:
        return uvloop.run(_serve(cfg, identity, b))
    except ConfigProblem as exc:
        log.error("Worker configuration error: %s", exc, extra={"error": str(exc)})
        return RET_CONFIG
    except Exception:
        log.exception("Worker crashed")
        return RET_FAIL


async def _serve(cfg: Config, identity: str, b: Boot) -> int:
    """Build the worker's ready parts on the running loop (a gRPC channel binds to it), then run it."""
    log.info("Connecting Fabric client for %s", identity, extra={
        "gateway": cfg.gateway, "tls": not cfg.insecure, "msp_id": cfg.msp_id,
        "types": len(b.types), "max_in_flight": cfg.max_in_flight})
    return await Worker(build_parts(cfg, identity, b)).main()


class Worker:
    """The running worker of one identity (see the module docstring).

    Given its ready parts (:func:`gxsubmit.workerparts.build_parts`); the pipeline is built in ``main``
    once the database link is up (it needs the schema's tx id key) and handed to the claim loop.
    """

    def __init__(self, parts: WorkerParts) -> None:
        self.parts = parts
        self.cfg = parts.cfg
        self.identity = parts.identity
        self.db = parts.db.link
        self.gateway = parts.gateway
        self.metrics = parts.metrics
        self.status = parts.status
        self.jobs = parts.jobs
        self.stop = parts.stop
        self.hard_stop = parts.hard_stop
        self.closing = parts.closing
        self._bg: list[asyncio.Task[Any]] = []
        self._signals = 0

    def _on_signal(self, signum: int) -> None:
        # Only record (style habit 1): the main task does the work.
        self._signals += 1
        self.stop.set()
        self.parts.wake.set()
        if self._signals > 1:
            self.hard_stop.set()

    def _spawn(self, coro: Any, name: str) -> None:
        self._bg.append(asyncio.get_running_loop().create_task(coro, name=name))

    # -- start -------------------------------------------------------------------------------------

    async def main(self) -> int:
        """Start in order (heartbeat, database, gateway, pipeline, loops), claim until stopped, drain."""
        loop = asyncio.get_running_loop()
        for sig in _handled_signals():
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.metrics.cert_expiry.set(self.status.cert_not_after.timestamp())
        self._spawn(self._heartbeat_loop(), "heartbeat")
        pipeline = await self._start()
        if pipeline is None:
            return await self._shutdown()
        self.status.ready = True
        self.status.write()  # readiness visible at once, not a heartbeat later
        for w in self.parts.watchers.values():
            self._spawn(w.run(self.closing), f"commits-{w.channel}")
        self._spawn(self.parts.wakeups.run(self.stop), "notify")
        self._spawn(self._renew_loop(), "renew")
        self._spawn(self._db_probe_loop(), "db-probe")
        self._spawn(self._wallet_loop(), "wallet")
        self._spawn(self._metrics_loop(), "metrics")
        await Claimer(self.parts, pipeline).run()
        return await self._shutdown()

    async def _start(self) -> Pipeline | None:
        """Open the database link, wait for the gateway, then build the pipeline; None when stopped first."""
        if not await self.parts.db.open(self.stop):
            return None
        if not await self._gateway_ready():
            return None
        log.info("Successfully connected Fabric client for %s", self.identity,
                 extra={"gateway": self.cfg.gateway, "fingerprint": self.parts.ring.current.fingerprint[:16]})
        # The key of the derived nonces (migration 0008): the same in every replica and every backup.
        deriver = TxIdDeriver(await self.db.call(lambda st: st.txid_key()))
        self.parts.db.start_batchers()
        return build_pipeline(self.parts, deriver)

    async def _gateway_ready(self) -> bool:
        pacer = Backoff(0.5, 15.0)
        while not self.stop.is_set():
            try:
                await self.gateway.wait_ready(self.cfg.connect_timeout)
                return True
            except FabricError as exc:
                self.status.last_error = str(exc)
                if pacer.failures == 0 or pacer.failures % 5 == 0:
                    log.warning("Gateway not reachable yet for %s; retrying", self.identity,
                                extra={"error": str(exc), "gateway": self.cfg.gateway})
                await pacer.sleep(self.stop)
        return False

    # -- background loops --------------------------------------------------------------------------

    async def _renew_loop(self) -> None:
        period = max(0.2, self.cfg.lease_seconds / 3)
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), period)
                return
            except TimeoutError:
                pass
            jobs = [j for j in self.jobs.values() if j.stage < Stage.FINISHING]
            if not jobs:
                continue
            try:
                leases = [j.lease for j in jobs]
                held = await self.db.once(
                    lambda st, ls=leases: st.renew(ls, self.cfg.lease_seconds))  # type: ignore[misc]
            except DbUnavailable:
                continue
            except Exception as exc:
                log.warning("Lease renewal failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                continue
            for j in jobs:
                if j.cmd.id not in held and j.stage < Stage.FINISHING and self.jobs.get(j.cmd.id) is j:
                    log.warning("Lease lost; another worker holds the command now", extra={
                        "command_id": str(j.cmd.id), "tx_id": j.tx_id})
                    if j.task is not None:
                        j.task.cancel()

    async def _db_probe_loop(self) -> None:
        """Ping the database when nothing else has for a while: under load the statements themselves
        notice a dead link (db_deadline); an idle worker would otherwise stay ready on one."""
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            quiet = loop.time() - self.db.last_ok
            if quiet < _DB_PROBE_QUIET_S or not self.db.ok:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), max(0.2, _DB_PROBE_QUIET_S - quiet))
                continue
            try:
                await self.db.once(lambda st: st.ping())
            except DbUnavailable:
                pass
            except Exception as exc:
                log.warning("Database probe failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(_DB_PROBE_QUIET_S)

    async def _wallet_loop(self) -> None:
        wallet = self.cfg.wallet
        sig = wallet_signature(wallet, [self.identity])
        while not self.stop.is_set():
            try:
                await asyncio.wait_for(self.stop.wait(), _WALLET_CHECK_S)
                return
            except TimeoutError:
                pass
            new_sig = wallet_signature(wallet, [self.identity])
            if new_sig == sig:
                continue
            sig = new_sig
            try:
                wi = await asyncio.to_thread(load_identity, wallet, self.identity, msp_id=self.cfg.msp_id,
                                             expected_role=self.parts.boot.role)
            except WalletError as exc:
                log.error("Rotated wallet files rejected; keeping the current certificate",
                          extra={"error": str(exc)})
                self.metrics.wallet_reload("rejected")
                continue
            ring = self.parts.ring
            if wi.fingerprint == ring.current.fingerprint:
                continue
            ring.rotate(SigningIdentity.from_wallet(wi), wi.not_after)
            self.status.cert_not_after = wi.not_after
            self.metrics.cert_expiry.set(wi.not_after.timestamp())
            self.metrics.wallet_reload("loaded")
            log.info("Loaded rotated certificate for %s", self.identity, extra={
                "fingerprint": wi.fingerprint[:16], "not_after": wi.not_after.isoformat()})

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(_METRICS_FLUSH_S)
            self.metrics.flush()

    async def _heartbeat_loop(self) -> None:
        while True:
            self.status.write()
            await asyncio.sleep(self.cfg.heartbeat_interval)

    # -- shutdown ----------------------------------------------------------------------------------

    async def _release(self, jobs: list[Job], timeout: float) -> int:  # noqa: ASYNC109
        if not jobs:
            return 0
        try:
            leases = [j.lease for j in jobs]
            return await self.db.call(lambda st: st.release(leases), timeout=max(0.5, timeout))
        except Exception as exc:
            log.warning("Could not hand back rows; their leases will expire", extra={
                "rows": len(jobs), "error": f"{type(exc).__name__}: {exc}"})
            return 0

    async def _cancel(self, jobs: list[Job]) -> None:
        tasks = [j.task for j in jobs if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def _shutdown(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.drain_timeout
        self.status.draining = True
        self.stop.set()
        in_flight = len(self.jobs)
        log.info("Worker stopping: draining in-flight commands", extra={
            "in_flight": in_flight, "drain_timeout_s": self.cfg.drain_timeout})
        # 2. not yet submitted: hand back now
        early = [j for j in self.jobs.values() if j.stage < Stage.SUBMITTING]
        await self._cancel(early)
        released = await self._release(early, deadline - loop.time())
        log.debug("Released unsubmitted commands", extra={"rows": released})
        # 3. submitted: wait for their commit until the deadline (or a second signal)
        waiting = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        if waiting and not self.hard_stop.is_set():
            hard = loop.create_task(self.hard_stop.wait())
            everything = loop.create_task(asyncio.wait(waiting))
            await asyncio.wait([everything, hard], timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
            hard.cancel()
            everything.cancel()
        # 4. the rest: cancel and hand back (nonce kept: the next holder resolves the same tx id)
        rest = list(self.jobs.values())
        await self._cancel(rest)
        for b in self.parts.db.batchers:
            await b.drain(min(3.0, max(0.5, deadline - loop.time())))
        released_late = await self._release(rest, min(5.0, max(1.0, deadline - loop.time())))
        # 5. close everything
        self.closing.set()
        for t in self._bg:
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        for b in self.parts.db.batchers:
            await b.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.parts.wakeups.close(), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.gateway.close(), 2.0)
        await self.parts.db.close()
        self.jobs.clear()
        self.status.ready = False
        self.status.write()
        self.metrics.in_flight.set(0)
        self.metrics.flush()
        log.info("Worker stopped", extra={
            "released": released + released_late, "in_flight_at_stop": in_flight,
            "committed": self.parts.outcomes.n_committed})
        return RET_OK

