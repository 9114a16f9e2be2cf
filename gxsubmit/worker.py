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

Exit codes: 0 drained; 78 configuration problem (catalogue, identity/role, wallet, TLS files);
1 anything unexpected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gxsubmit.backoff import Backoff, compute_delay
from gxsubmit.breaker import BreakerState, CircuitBreaker
from gxsubmit.catalog import Catalog, CatalogError, load_catalog
from gxsubmit.config import Config
from gxsubmit.dbconn import with_tcp
from gxsubmit.dblink import Batcher, DbLink, DbUnavailable
from gxsubmit.exitcodes import RET_CONFIG, RET_FAIL, RET_OK
from gxsubmit.fabric import Deadlines, FabricError, GatewayClient, SigningIdentity
from gxsubmit.fabric.commits import CommitWatcher, tls_cert_hash
from gxsubmit.gatewayprobe import probe_idle_gateway
from gxsubmit.log import setup_logging
from gxsubmit.metrics import WorkerMetrics
from gxsubmit.outbox import ClaimedCommand, Committed, OutboxListener, OutboxStore, SubmittedTx
from gxsubmit.pipeline import IdentityRing, Job, Pipeline, PipelineSettings, Stage
from gxsubmit.secrets import no_core_dumps
from gxsubmit.txid import TxIdDeriver
from gxsubmit.wakeups import Wakeups
from gxsubmit.wallet import WalletError, WalletIdentity, load_identity, load_tls_client, wallet_signature
from gxsubmit.workerstatus import WorkerStatus, owner_id, status_path, write_status

__all__ = ["Boot", "ConfigProblem", "Worker", "boot", "run", "status_path"]

log = logging.getLogger("gxsubmit.worker")

_WALLET_CHECK_S = 3.0
_MIN_CLAIM_GAP_S = 0.005  # coalesce NOTIFY bursts into one claim
_SLOT_WAIT_S = 0.02  # with a backlog, wait this long for more free slots before a small claim
_GC_GEN0_THRESHOLD = 10_000  # CPython's default is 700
#: With no statement answered for this long, the worker sends a ping so a dead link shows in /readyz
#: (within this + db_deadline + a heartbeat) even when idle; costs 1/5 statement/s per idle worker.
_DB_PROBE_QUIET_S = 5.0
_METRICS_FLUSH_S = 0.5  # buffered per-command metrics reach the mmap files at least this often
_BATCH_LINGER_S = 0.005  # under load, a batched status write waits this long for more rows
#: A claim only counts as having seen a put-back row when it ran this long after the row's due time.
_RETRY_CLOCK_SKEW_S = 0.05
#: How often a busy worker asks whether rows that crashed a worker wait to be run alone (migration 0009).
_SUSPECT_CHECK_S = 5.0


def _handled_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM always; SIGINT only if it was not ignored at process start (the supervisor spawns
    workers with SIGINT ignored so a terminal Ctrl-C reaches only the supervisor)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return (signal.SIGTERM,)
    return (signal.SIGTERM, signal.SIGINT)


class ConfigProblem(Exception):
    """Something only the operator can fix; the worker exits 78 and is not restarted in a loop."""


@dataclass(frozen=True)
class Boot:
    """Everything checked before the event loop starts (so a bad wallet exits 78 at once)."""

    catalog: Catalog
    types: tuple[str, ...]
    role: str
    wallet_identity: WalletIdentity
    tls_root: bytes | None
    client_cert: bytes | None
    #: the client TLS private key: never in a repr (a Boot can end up in a traceback or a debug log)
    client_key: bytes | None = field(repr=False)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigProblem(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def boot(cfg: Config, identity: str) -> Boot:
    """Load the catalogue, the identity (with its required role) and the TLS files."""
    try:
        catalog = load_catalog(cfg.catalog)
    except CatalogError as exc:
        raise ConfigProblem(f"catalogue: {exc}") from None
    role = catalog.identities.get(identity)
    if role is None:
        known = ", ".join(sorted(catalog.identities)) or "none"
        raise ConfigProblem(f"identity {identity!r} is not in the catalogue (known: {known})")
    types = tuple(catalog.types_for(identity))
    if not types:
        raise ConfigProblem(f"no command types are routed to identity {identity!r}")
    try:
        wi = load_identity(cfg.wallet, identity, msp_id=cfg.msp_id, expected_role=role)
    except WalletError as exc:
        raise ConfigProblem(str(exc)) from None
    tls_root = client_cert = client_key = None
    if not cfg.insecure:
        tls_root = _read(cfg.tls_ca_path, "the gateway TLS CA (set --tls-ca, or --insecure for plaintext)")
        if cfg.client_cert is not None and cfg.client_key is not None:
            client_cert = _read(cfg.client_cert, "the client TLS certificate")
            client_key = _read(cfg.client_key, "the client TLS key")
        else:
            try:
                pair = load_tls_client(cfg.wallet)
            except WalletError as exc:
                raise ConfigProblem(str(exc)) from None
            if pair is not None:
                client_cert, client_key = pair
    return Boot(catalog, types, role, wi, tls_root, client_cert, client_key)


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


def gateway_client(cfg: Config, b: Boot) -> GatewayClient:
    """The Gateway client of this process (the channel connects lazily; ``Worker`` waits for it)."""
    try:
        return GatewayClient(
            target=cfg.gateway, tls_root=b.tls_root, server_name=cfg.server_name,
            client_cert=b.client_cert, client_key=b.client_key,
            deadlines=Deadlines(evaluate=cfg.evaluate_timeout, endorse=cfg.endorse_timeout,
                                submit=cfg.submit_timeout, commit_status=cfg.commit_timeout),
            keepalive_s=cfg.keepalive)
    except ValueError as exc:
        raise ConfigProblem(f"gateway client: {exc}") from None


async def _serve(cfg: Config, identity: str, b: Boot) -> int:
    """Build the worker's ready parts on the running loop (a gRPC channel binds to it), then run it."""
    log.info("Connecting Fabric client for %s", identity, extra={
        "gateway": cfg.gateway, "tls": not cfg.insecure, "msp_id": cfg.msp_id,
        "types": len(b.types), "max_in_flight": cfg.max_in_flight})
    wi = b.wallet_identity
    ring = IdentityRing(SigningIdentity.from_wallet(wi), wi.not_after)
    return await Worker(cfg, identity, b, gateway=gateway_client(cfg, b), ring=ring).main()


def free_slots(cap: int, jobs: int, finishing: int) -> int:
    """In-flight slots free for new claims, of ``cap``, with ``jobs`` in memory of which ``finishing``
    only write their outcome. Those hold no slot: the next claim overlaps that write instead of
    waiting a round trip for it. Jobs in memory stay under twice the limit, so outcome writes that
    cannot land stop the claims."""
    return min(cap - (jobs - finishing), 2 * cap - jobs)


class Worker:
    """The running worker of one identity (see the module docstring).

    Given its ready parts: the Gateway client and the signing identity ring. The pipeline is built in
    ``main`` because it needs the schema's tx id key, read once the database link is up.
    """

    def __init__(self, cfg: Config, identity: str, b: Boot, *, gateway: GatewayClient,
                 ring: IdentityRing) -> None:
        self.cfg = cfg
        self.identity = identity
        self.boot = b
        self.gateway = gateway
        self._ring = ring
        self.jobs: dict[uuid.UUID, Job] = {}
        self.stop = asyncio.Event()
        self.hard_stop = asyncio.Event()
        #: set at the end of shutdown: the commit streams keep answering the drain's commit waits
        self.closing = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop  # set by main()
        self._signals = 0
        self.ready = False
        self.draining = False
        self.started = time.time()
        self.metrics = WorkerMetrics(identity)
        self.breaker = CircuitBreaker(
            threshold=cfg.breaker_threshold, cooldown=min(cfg.breaker_cooldown, 2.0),
            max_cooldown=max(cfg.breaker_cooldown, 2.0))
        self._db_url = with_tcp(cfg.database_conninfo, cfg)
        self.db = DbLink(self._connect_store, max_delay=10.0, on_reconnect=self._on_db_reconnect,
                         deadline=cfg.db_deadline)
        #: the batched outcome writes (submitted and committed marks) have a connection of their own, so
        #: they never queue behind a claim or a renewal, nor the claim of freed slots behind them: a
        #: statement holds its connection for a whole round trip, which far from the database is most
        #: of a command's time (bench/run.py wan)
        self.writes = DbLink(self._connect_store, max_delay=10.0, on_reconnect=self._on_db_reconnect,
                             deadline=cfg.db_deadline)
        listen_url = with_tcp(cfg.listen_conninfo, cfg)
        self.wakeups = Wakeups(
            connect=lambda: OutboxListener.connect(listen_url, connect_timeout=cfg.connect_timeout,
                                                   schema=cfg.schema, types=b.types),
            send_probe=lambda payload: self.db.once(lambda st: st.notify_probe(payload)),
            wake=self._wake, poll_interval=cfg.poll_interval, pooled_poll_interval=cfg.pooled_poll_interval)
        self.pipeline: Pipeline | None = None
        self._bg: list[asyncio.Task[Any]] = []
        self._status_file = status_path(cfg.runtime_dir, identity)
        self._wallet_identity = b.wallet_identity
        self._batchers: tuple[Batcher[Any], ...] = ()
        self.last_error: str | None = None
        #: a row whose earlier claim ended in a crash runs alone: this is it while it is in flight
        self._suspect: Job | None = None
        self._suspects_due = True  # asked at start, then every _SUSPECT_CHECK_S and after each suspect
        self._suspect_check_at = 0.0

    # -- setup -------------------------------------------------------------------------------------

    async def _connect_store(self) -> OutboxStore:
        return await OutboxStore.connect(self._db_url, schema=self.cfg.schema,
                                         worker_id=owner_id(self.cfg.worker_id, self.identity, os.getpid()),
                                         connect_timeout=self.cfg.connect_timeout)

    def _on_db_reconnect(self) -> None:
        self.metrics.db_reconnects.inc()
        self._wake.set()

    def _on_signal(self, signum: int) -> None:
        # Only record (style habit 1): the main task does the work.
        self._signals += 1
        self.stop.set()
        self._wake.set()
        if self._signals > 1:
            self.hard_stop.set()

    def _spawn(self, coro: Any, name: str) -> None:
        self._bg.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def main(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        for sig in _handled_signals():
            loop.add_signal_handler(sig, self._on_signal, sig)
        cfg = self.cfg
        self.metrics.cert_expiry.set(self._wallet_identity.not_after.timestamp())
        ring = self._ring
        self._spawn(self._heartbeat_loop(), "heartbeat")

        opened = await asyncio.gather(self.db.open(self.stop), self.writes.open(self.stop))
        if not all(opened):
            return await self._shutdown()
        if not await self._gateway_ready():
            return await self._shutdown()
        log.info("Successfully connected Fabric client for %s", self.identity,
                 extra={"gateway": cfg.gateway, "fingerprint": ring.current.fingerprint[:16]})

        # The key of the derived nonces (migration 0008): the same in every replica and every backup.
        deriver = TxIdDeriver(await self.db.call(lambda st: st.txid_key()))
        linger = _BATCH_LINGER_S  # the same for both: they share one connection
        committed: Batcher[tuple[Committed, str]] = Batcher(
            "committed", self._flush_committed, lambda c: c[0].id, linger_s=linger)
        submitted: Batcher[SubmittedTx] = Batcher(
            "submitted", lambda items: self.writes.call(lambda st: st.mark_submitted_tx(items)),
            lambda r: r.id, linger_s=linger)
        committed.start()
        submitted.start()
        watchers = self._commit_watchers(ring) if cfg.commit_events else {}
        self.pipeline = Pipeline(
            settings=PipelineSettings(
                identity=self.identity, max_attempts=cfg.max_attempts,
                resolve_timeout=min(5.0, cfg.commit_timeout), endorsing_orgs=tuple(cfg.endorsing_orgs),
                channel=cfg.channel, chaincode=cfg.chaincode, max_argument_bytes=cfg.max_argument_bytes,
                max_proposal_bytes=cfg.max_proposal_bytes, max_worker_crashes=cfg.max_worker_crashes,
                in_doubt_limit=cfg.in_doubt_limit),
            catalog=self.boot.catalog, db=self.db, gateway=self.gateway, ring=ring, breaker=self.breaker,
            metrics=self.metrics,
            backoff=lambda attempt: compute_delay(attempt, cfg.backoff_base, cfg.backoff_cap, jitter=0.5),
            backoff_cap=cfg.backoff_cap, submitted=submitted, committed=committed, deriver=deriver,
            lease_s=cfg.lease_seconds, watchers=watchers, on_finishing=self._wake.set)
        self._batchers = (submitted, committed)
        self.ready = True
        self._write_status()  # readiness visible at once, not a heartbeat later
        for w in watchers.values():
            self._spawn(w.run(self.closing), f"commits-{w.channel}")
        self._spawn(self.wakeups.run(self.stop), "notify")
        self._spawn(self._renew_loop(), "renew")
        self._spawn(self._db_probe_loop(), "db-probe")
        self._spawn(self._wallet_loop(), "wallet")
        self._spawn(self._metrics_loop(), "metrics")
        await self._claim_loop()
        return await self._shutdown()

    def _commit_watchers(self, ring: IdentityRing) -> dict[str, CommitWatcher]:
        """One filtered-block stream per channel this worker's commands go to."""
        channels = [self.cfg.channel] if self.cfg.channel else self.boot.catalog.channels_for(self.identity)
        tls_hash = tls_cert_hash(self.boot.client_cert) if self.boot.client_cert else None
        return {ch: CommitWatcher(self.gateway, lambda: ring.current, ch, tls_cert_hash=tls_hash,
                                  on_state=self._on_commit_stream, timeout_s=self.cfg.commit_timeout)
                for ch in channels}

    def _on_commit_stream(self, up: bool) -> None:
        self.metrics.commit_stream_up.set(1 if up else 0)
        self._write_status()

    async def _gateway_ready(self) -> bool:
        pacer = Backoff(0.5, 15.0)
        while not self.stop.is_set():
            try:
                await self.gateway.wait_ready(self.cfg.connect_timeout)
                return True
            except FabricError as exc:
                self.last_error = str(exc)
                if pacer.failures == 0 or pacer.failures % 5 == 0:
                    log.warning("Gateway not reachable yet for %s; retrying", self.identity,
                                extra={"error": str(exc), "gateway": self.cfg.gateway})
                await pacer.sleep(self.stop)
        return False

    # -- claiming ----------------------------------------------------------------------------------

    async def _wait_wake(self, timeout: float) -> None:  # noqa: ASYNC109 - bounded wait on an event
        if self.stop.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    def _poll_timeout(self) -> float:
        return self.wakeups.poll_interval * random.uniform(0.8, 1.2)

    async def _claim_loop(self) -> None:
        cfg = self.cfg
        cap = cfg.max_in_flight
        min_claim = max(1, min(cfg.batch_size, cap // 8))
        backlog = False
        last_claim = 0.0
        claim_fail = Backoff(0.2, 10.0)
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            if not self.db.ok:
                await self.db.wait_ready(1.0)
                continue
            state = self.breaker.state
            if state is BreakerState.OPEN:
                self.metrics.breaker_open.set(1)
                await self._wait_wake(max(0.05, self.breaker.remaining()))
                continue
            if await self._run_suspect():
                continue
            free = self._free_slots(cap)
            if state is BreakerState.HALF_OPEN:
                free = min(free, 1)  # one probe command
            if free <= 0:
                await self._wait_wake(1.0)
                continue
            if backlog and free < min_claim:
                await self._wait_wake(_SLOT_WAIT_S)  # let more slots free up: claims are cheaper in bulk
                if self.stop.is_set():
                    break
                free = self._free_slots(cap)
            gap = _MIN_CLAIM_GAP_S - (loop.time() - last_claim)
            if gap > 0:
                await asyncio.sleep(gap)
            limit = min(free, cfg.batch_size)
            last_claim = loop.time()
            claimed_mono = time.monotonic() - _RETRY_CLOCK_SKEW_S
            try:
                rows = await self.db.once(
                    lambda st, n=limit: st.claim(self.boot.types, n, cfg.lease_seconds,  # type: ignore[misc]
                                                 max_payload_bytes=cfg.max_payload_bytes))
            except DbUnavailable:
                continue
            except Exception as exc:
                self.last_error = f"claim failed: {type(exc).__name__}: {exc}"
                log.error("Claim failed; retrying", extra={"error": self.last_error})
                await claim_fail.sleep(self.stop)
                continue
            claim_fail.reset()
            for cmd in rows:
                self._start(cmd)
            if not rows and state is BreakerState.HALF_OPEN:
                await self._probe_idle_gateway()
            backlog = len(rows) >= limit
            if not backlog:
                timeout = self._poll_timeout()
                if self.pipeline is not None:
                    due = self.pipeline.next_retry_in(time.monotonic(), claimed_mono)
                    if due is not None:
                        timeout = min(timeout, due)
                await self._wait_wake(timeout)

    def _free_slots(self, cap: int) -> int:
        finishing = sum(1 for j in self.jobs.values() if j.stage is Stage.FINISHING)
        return free_slots(cap, len(self.jobs), finishing)

    async def _probe_idle_gateway(self) -> None:
        """Half-open with nothing to send: probe with a read so a healed link closes the breaker."""
        assert self.pipeline is not None
        channels = [self.cfg.channel] if self.cfg.channel else self.boot.catalog.channels_for(self.identity)
        if not channels:
            return
        outcome = await probe_idle_gateway(self.gateway, self._ring.current, channels[0], self.breaker)
        if outcome is not False:
            self.pipeline.note_probe(None if outcome is True else outcome)
            self._write_status()

    async def _run_suspect(self) -> bool:
        """Rows set to run alone (a crash short of max_worker_crashes; migration 0009) run one at a time
        with nothing else in flight, so a crash then is that row's own and the rows that merely shared
        its batches are never blamed. True: nothing else may be claimed now (the claim loop waits and
        comes back)."""
        if self._suspect is not None:
            await self._wait_wake(1.0)  # it runs alone; its end wakes us
            return True
        now = time.monotonic()
        if not self._suspects_due and now >= self._suspect_check_at:
            self._suspect_check_at = now + _SUSPECT_CHECK_S
            try:
                self._suspects_due = await self.db.once(lambda st: st.suspects_due(self.boot.types))
            except Exception:  # the claim right after reports database trouble
                return False
        if not self._suspects_due:
            return False
        if self.jobs:
            await self._wait_wake(1.0)  # let the work in flight finish first
            return True
        try:
            rows = await self.db.once(lambda st: st.claim_suspect(
                self.boot.types, self.cfg.lease_seconds, max_payload_bytes=self.cfg.max_payload_bytes))
        except Exception:
            return False
        if not rows:
            self._suspects_due = False
            self._suspect_check_at = time.monotonic() + _SUSPECT_CHECK_S
            return False
        log.warning("Running alone a command whose earlier claim ended in a worker crash", extra={
            "command_id": str(rows[0].id), "command_type": rows[0].command_type,
            "crashed_claims": rows[0].crashed_claims})
        self._suspect = self._start(rows[0])
        return True

    def _start(self, cmd: ClaimedCommand) -> Job:
        assert self.pipeline is not None
        job = Job(cmd=cmd, claimed_at=time.monotonic())
        self.jobs[cmd.id] = job
        self.metrics.claimed(cmd.command_type)
        task = self._loop.create_task(self.pipeline.run(job))
        job.task = task
        task.add_done_callback(functools.partial(self._done, job))
        return job

    def _done(self, job: Job, _task: object = None) -> None:
        if self.jobs.get(job.cmd.id) is job:
            del self.jobs[job.cmd.id]
        if self._suspect is job:
            self._suspect = None
            self._suspects_due = True  # there may be more: ask at once
        self._wake.set()

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
                                             expected_role=self.boot.role)
            except WalletError as exc:
                log.error("Rotated wallet files rejected; keeping the current certificate",
                          extra={"error": str(exc)})
                self.metrics.wallet_reload("rejected")
                continue
            if wi.fingerprint == self._ring.current.fingerprint:
                continue
            self._ring.rotate(SigningIdentity.from_wallet(wi), wi.not_after)
            self._wallet_identity = wi
            self.metrics.cert_expiry.set(wi.not_after.timestamp())
            self.metrics.wallet_reload("loaded")
            log.info("Loaded rotated certificate for %s", self.identity, extra={
                "fingerprint": wi.fingerprint[:16], "not_after": wi.not_after.isoformat()})

    async def _flush_committed(self, items: list[tuple[Committed, str]]) -> set[uuid.UUID]:
        """One fenced ``mark_committed`` for the batch; the committed counters are written right after
        it (before any waiter resumes), so /metrics never lags the rows by a flush period."""
        rows = [c for c, _ in items]
        held = await self.writes.call(lambda st: st.mark_committed(rows))
        for c, command_type in items:
            if c.id in held:
                self.metrics.committed(command_type)
        self.metrics.flush()
        return held

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(_METRICS_FLUSH_S)
            self.metrics.flush()

    async def _heartbeat_loop(self) -> None:
        while True:
            self._write_status()
            await asyncio.sleep(self.cfg.heartbeat_interval)

    def _write_status(self) -> None:
        p = self.pipeline
        breaker_open = not self.breaker.is_closed
        self.metrics.breaker_open.set(1 if breaker_open else 0)
        self.metrics.in_flight.set(len(self.jobs))
        # The pipeline only learns of an outage from its own calls; an idle worker would report a gateway
        # it cannot reach (a peer down, a TLS CA that no longer matches) as fine. The channel knows.
        unreachable = self.gateway is not None and self.gateway.connectivity() == "TRANSIENT_FAILURE"
        last_error = ((p.last_error if p and p.last_error else None) or self.last_error or self.db.last_error
                      or self.writes.last_error)
        if unreachable:
            watchers = p.watchers.values() if p else ()
            stream_error = next((w.last_error for w in watchers if w.last_error), None)
            last_error = stream_error or f"cannot connect to gateway {self.cfg.gateway}"
        status = WorkerStatus(
            pid=os.getpid(),
            identity=self.identity,
            ts=time.time(),
            started_at=self.started,
            ready=self.ready and not self.draining,
            db_ok=self.db.ok and self.writes.ok,
            gateway_ok=bool(self.ready and (p.gateway_ok if p else True) and not unreachable),
            breaker_open=breaker_open,
            in_flight=len(self.jobs),
            committed=p.n_committed if p else 0,
            failed=p.n_failed if p else 0,
            last_error=last_error,
            draining=self.draining,
            cert_not_after=self._wallet_identity.not_after.isoformat(),
            commit_stream=bool(p and any(w.live for w in p.watchers.values())),
            wakeups=self.wakeups.mode,
            wakeup_warning=self.wakeups.warning,
        )
        path = self._status_file
        try:
            write_status(path, status)
        except OSError as exc:
            log.warning("Cannot write status file", extra={"path": str(path), "error": str(exc)})

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
        self.draining = True
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
        for b in self._batchers:
            await b.drain(min(3.0, max(0.5, deadline - loop.time())))
        released_late = await self._release(rest, min(5.0, max(1.0, deadline - loop.time())))
        # 5. close everything
        self.closing.set()
        for t in self._bg:
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        for b in self._batchers:
            await b.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.wakeups.close(), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.gateway.close(), 2.0)
        await self.db.close()
        await self.writes.close()
        self.jobs.clear()
        self.ready = False
        self._write_status()
        self.metrics.in_flight.set(0)
        self.metrics.flush()
        log.info("Worker stopped", extra={
            "released": released + released_late, "in_flight_at_stop": in_flight,
            "committed": self.pipeline.n_committed if self.pipeline else 0})
        return RET_OK

