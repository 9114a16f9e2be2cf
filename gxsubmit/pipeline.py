"""One command's way through Fabric, with the exactly-once protocol on every path.

The protocol: docs/design.md#exactly-once-effect-on-the-ledger.

Per claimed row (first try, retry, takeover of an expired lease, restart — all the same code):

1. route + arguments (catalogue); a bad payload or an unknown type fails at once.
2. nonce: derived (gxsubmit.txid) from the request, the content and the row's generation, so every
   replica, restart and restore gets the same tx id without writing anything first. A row that
   holds a stored nonce (from before migration 0008) keeps it. A stored tx id that no identity we
   hold reproduces (rotation, a re-encoded certificate, a changed catalogue) is resolved by
   CommitStatus first: never endorse a tx id other than the row's stored one without that.
3. Endorse. A "duplicate transaction" answer means the ledger holds this tx id: resolve it (VALID:
   committed with its block; definitely INVALID: the next generation, endorsed at once; bounded).
4. ``mark_submitted_tx`` (write-ahead: the row says "a copy may be on the ledger", with its tx id,
   *before* the envelope leaves), then Submit.
5. The commit (block stream or CommitStatus), then ``mark_committed`` (batched).

Outcomes by error class: TRANSIENT, IN_DOUBT and CONFLICT retry later with the same nonce (an
endorsement mismatch says nothing about the tx id, and a copy of it may be in flight); only a
definite INVALID commit of the tx id advances the generation; PERMANENT fails the row — unless a
copy may already be on the ledger, in which case the row is never failed without a definite
answer for its tx id. Gateway-unavailable failures
(and anything refused by an open breaker) never exhaust ``max_attempts``: an outage must not
dead-letter the backlog.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gxsubmit.breaker import CircuitBreaker
from gxsubmit.catalog import Catalog, PayloadError, Route
from gxsubmit.dblink import Batcher, DbLink, DbUnavailable
from gxsubmit.fabric import (
    CommitResult,
    ErrorClass,
    FabricError,
    GatewayClient,
    Proposal,
    SigningIdentity,
    build_proposal,
    classify_validation_code,
    compute_tx_id,
)
from gxsubmit.fabric.codes import BOUNDED_RETRY_CODES
from gxsubmit.fabric.commits import CommitWatcher
from gxsubmit.metrics import WorkerMetrics
from gxsubmit.outbox import ClaimedCommand, Committed, SubmittedTx
from gxsubmit.rowdecode import BadPayload
from gxsubmit.txid import TxIdDeriver

__all__ = [
    "INFRA_ERROR_CODES",
    "IdentityRing",
    "Job",
    "Pipeline",
    "PipelineSettings",
    "Stage",
    "commit_action",
    "creator_long_expired",
    "error_action",
    "in_doubt_expired",
    "reproducing_signer",
]

log = logging.getLogger("gxsubmit.pipeline")

#: Error codes that say "the gateway is not there", not "this command is in trouble": they feed the
#: breaker and never count towards ``max_attempts``.
INFRA_ERROR_CODES = frozenset({"GATEWAY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED", "BREAKER_OPEN"})

#: How many times a bounded-retry commit code (ENDORSEMENT_POLICY_FAILURE) gets a new nonce.
_BOUNDED_RETRIES = 3
#: Generations one claim may walk through on "duplicate transaction" answers whose tx id the ledger holds
#: as INVALID (after a restore, the row's generation can be behind the ledger's); then it goes back.
_WALK_LIMIT = 16
#: Proposal reuse window: Fabric 3 peers reject proposals older than 15 minutes.
_PROPOSAL_TTL_S = 300.0
#: How long after its creator certificate expired a tx id that the ledger does not know is taken as
#: lost for good. Orderers refuse an envelope whose creator has expired (docs/design.md#rotated-certificates),
#: and one accepted just before is in a block within the batch timeout; the hour also covers
#: orderer clocks that run behind ours and a peer that is still catching up on those blocks.
EXPIRED_CREATOR_GRACE = timedelta(hours=1)
#: Wake a little after a put-back row's next_attempt_at (the database clock decides "due").
_RETRY_WAKE_SLACK_S = 0.05


class Stage(enum.IntEnum):
    """How far a job got; shutdown releases jobs before SUBMITTING and waits for the others."""

    QUEUED = 0
    PREPARING = 1
    ENDORSING = 2
    SUBMITTING = 3
    COMMIT_WAIT = 4
    FINISHING = 5


@dataclass(slots=True, eq=False)
class Job:
    """A claimed command inside this worker."""

    cmd: ClaimedCommand
    claimed_at: float
    stage: Stage = Stage.QUEUED
    tx_id: str | None = None
    #: the nonce generation of ``tx_id`` (a derived nonce; the row's own for a stored one)
    generation: int = 0
    may_be_on_ledger: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def lease(self) -> tuple[uuid.UUID, uuid.UUID]:
        return (self.cmd.id, self.cmd.lease_token)


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    identity: str
    max_attempts: int = 10
    resolve_timeout: float = 5.0  # CommitStatus deadline when resolving an old tx id
    conflict_delay: float = 0.05  # first re-try after an MVCC conflict (jittered by backoff)
    endorsing_orgs: tuple[str, ...] = ()
    channel: str | None = None  # overrides of the catalogue's channel/chaincode
    chaincode: str | None = None
    #: limits before the wire (config.py; docs/operations.md "Limits"): over one, PAYLOAD_TOO_LARGE
    max_argument_bytes: int | None = None
    max_proposal_bytes: int | None = None
    #: claims that may end in a worker crash before the row is FAILED (WORKER_CRASH)
    max_worker_crashes: int | None = None
    #: seconds a submitted tx id may stay in doubt before the row is FAILED (IN_DOUBT_UNRESOLVED); 0: never
    in_doubt_limit: float = 0.0


# --------------------------------------------------------------------------------------------------
# pure decisions (unit-tested without I/O)

def reproducing_signer(nonce: bytes, tx_id: str | None,
                       signers: Sequence[SigningIdentity]) -> SigningIdentity | None:
    """The identity whose creator turns ``nonce`` into the stored ``tx_id`` (the first when no tx id is
    stored), or None: then endorsing would make a different transaction, and the stored one must be
    resolved first. "Same creator" is decided by the tx id, not by a certificate fingerprint: the same
    certificate in other bytes (CRLF, no final newline) or under another MSP id is another creator."""
    if tx_id is None:
        return signers[0] if signers else None
    for signer in signers:
        if compute_tx_id(nonce, signer.creator) == tx_id:
            return signer
    return None


def in_doubt_expired(action: Action, submitted_at: datetime | None, now: datetime, limit_s: float) -> bool:
    """A retry that would leave the row's tx id in doubt once more, long after it was first submitted.

    Every other retry is bounded by max_attempts (counted) or by the gateway coming back (outages are
    not ``in_doubt``); this one is bounded by time. Failing the row keeps exactly-once: it keeps its tx
    id and nonce, so a requeue re-endorses that same tx id and finds the committed copy, if any."""
    return (limit_s > 0 and action.reason == "in_doubt" and submitted_at is not None
            and now - submitted_at > timedelta(seconds=limit_s))


def creator_long_expired(not_after: datetime | None, now: datetime) -> bool:
    """Whether no orderer accepts envelopes signed under that certificate any more, and every one it
    accepted before has long been in a block: then a tx id the ledger does not hold never will be."""
    return not_after is not None and now >= not_after + EXPIRED_CREATOR_GRACE


@dataclass(frozen=True, slots=True)
class Action:
    """What to do with the row: commit, fail, retry (same or new nonce), or resolve its tx id."""

    kind: Literal["commit", "fail", "retry", "resolve"]
    error_code: str = ""
    burn_nonce: bool = False
    counts: bool = True  # counts against max_attempts
    on_ledger: bool = False  # a copy may be on the ledger: never FAILED without a definite answer
    reason: str = ""  # metric label for retries (bounded set)
    #: the gateway refused this copy for good (e.g. the orderer: too large): once the counted attempts
    #: are spent, the row is FAILED with this code even though an earlier copy may be on the ledger
    refused: bool = False


def commit_action(code: int, code_name: str, attempts: int) -> Action:
    """Decision for a CommitStatus answer about our tx id."""
    cls = classify_validation_code(code)
    if cls is None:
        return Action("commit")
    if cls is ErrorClass.CONFLICT:
        return Action("retry", code_name, burn_nonce=True, reason="conflict")
    if cls is ErrorClass.DUPLICATE or cls is ErrorClass.TRANSIENT:
        # CommitStatus reports the first copy; a DUPLICATE_TXID/NOT_VALIDATED answer is not final.
        return Action("retry", code_name, counts=False, on_ledger=True, reason="in_doubt")
    if code in BOUNDED_RETRY_CODES and attempts < _BOUNDED_RETRIES:
        return Action("retry", code_name, burn_nonce=True, reason="conflict")
    return Action("fail", code_name)


def error_action(err: FabricError, *, may_be_on_ledger: bool) -> Action:
    """Decision for a failed RPC (the error class was decided once, in gxsubmit.fabric.errors)."""
    cls = err.error_class
    infra = err.error_code in INFRA_ERROR_CODES or err.stage == "connect"
    if cls is ErrorClass.DUPLICATE:
        return Action("resolve", err.error_code, on_ledger=True)
    if cls is ErrorClass.TRANSIENT:
        return Action("retry", err.error_code, counts=not infra, on_ledger=may_be_on_ledger,
                      reason="gateway_unavailable" if infra else "transient")
    if cls is ErrorClass.IN_DOUBT:
        return Action("retry", err.error_code, counts=False, on_ledger=True, reason="in_doubt")
    if cls is ErrorClass.CONFLICT:
        # Never a new nonce here, whatever the stage: an endorsement mismatch says nothing about the tx
        # id, and a copy of it may be being ordered (a lost Submit answer; peers at different heights
        # while it is). Only a definite INVALID commit of the tx id moves to the next generation.
        if may_be_on_ledger and err.stage != "endorse":
            return Action("retry", err.error_code, counts=False, on_ledger=True, reason="in_doubt")
        return Action("retry", err.error_code, on_ledger=may_be_on_ledger, reason="conflict")
    # PERMANENT
    if may_be_on_ledger:
        # An earlier copy may still commit (or has): ask the ledger before dead-lettering.
        return Action("resolve", err.error_code, on_ledger=True)
    return Action("fail", err.error_code)


# --------------------------------------------------------------------------------------------------
# identities


class IdentityRing:
    """The identity new attempts sign with, plus earlier ones still valid (after a rotation), so a
    row whose tx id was made under the old certificate keeps it. Keyed by creator fingerprint."""

    def __init__(self, current: SigningIdentity, not_after: datetime) -> None:
        self._current = current
        self._all: OrderedDict[str, tuple[SigningIdentity, datetime]] = OrderedDict()
        self._all[current.creator_fingerprint] = (current, not_after)

    @property
    def current(self) -> SigningIdentity:
        return self._current

    def rotate(self, new: SigningIdentity, not_after: datetime) -> None:
        self._current = new
        self._all[new.creator_fingerprint] = (new, not_after)
        self._all.move_to_end(new.creator_fingerprint)
        while len(self._all) > 4:
            self._all.popitem(last=False)

    def add_former(self, signer: SigningIdentity, not_after: datetime) -> None:
        """An earlier creator of a key held here (see ``SigningIdentity.as_creator``); never current."""
        if signer.creator_fingerprint not in self._all:
            self._all[signer.creator_fingerprint] = (signer, not_after)
            self._all.move_to_end(signer.creator_fingerprint, last=False)

    def signers(self, now: datetime | None = None) -> list[SigningIdentity]:
        """The identities that can still sign, the current one first."""
        now = now or datetime.now(UTC)
        out = [self._current]
        out.extend(s for s, na in reversed(self._all.values()) if s is not self._current and na > now)
        return out

    def get(self, fingerprint: str, now: datetime | None = None) -> SigningIdentity | None:
        entry = self._all.get(fingerprint)
        if entry is None:
            return None
        if entry[1] <= (now or datetime.now(UTC)):
            return None  # expired: the peer would refuse its signature
        return entry[0]

    def holds(self, fingerprint: str) -> bool:
        return self.get(fingerprint) is not None

    def not_after(self, fingerprint: str | None) -> datetime | None:
        """Expiry of a certificate this process has held (None: never seen here)."""
        entry = self._all.get(fingerprint) if fingerprint is not None else None
        return entry[1] if entry is not None else None


# --------------------------------------------------------------------------------------------------
# the pipeline


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a shared task's exception as seen: the jobs that awaited it may all have been cancelled."""
    if not task.cancelled():
        task.exception()


class _Gone(Exception):
    """The lease was lost (another worker took the row over): stop touching it."""


class Pipeline:
    """Runs jobs. Owns nothing long-lived except a small proposal cache; the worker owns the loops."""

    def __init__(
        self,
        *,
        settings: PipelineSettings,
        catalog: Catalog,
        db: DbLink,
        gateway: GatewayClient,
        ring: IdentityRing,
        breaker: CircuitBreaker,
        metrics: WorkerMetrics,
        backoff: Callable[[int], float],
        backoff_cap: float,
        committed: Batcher[tuple[Committed, str]],  # (row, command_type): the batch counts commits
        submitted: Batcher[SubmittedTx],
        deriver: TxIdDeriver,
        lease_s: float,
        watchers: Mapping[str, CommitWatcher] | None = None,
        on_finishing: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        #: told when a job has its outcome and only writes it: its in-flight slot is free from then on
        self._on_finishing = on_finishing
        #: channel -> its filtered-block stream (empty: one CommitStatus call per transaction)
        self.watchers: Mapping[str, CommitWatcher] = watchers or {}
        self.catalog = catalog
        self.db = db
        self.gateway = gateway
        self.ring = ring
        self.breaker = breaker
        self.metrics = metrics
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.submitted = submitted
        self.committed = committed
        self.deriver = deriver
        self.lease_s = lease_s
        #: monotonic times at which rows this worker put back with retry_later become due (a heap)
        self.retry_due: list[float] = []
        self._proposals: OrderedDict[str, tuple[Proposal, float]] = OrderedDict()
        #: creator fingerprints recorded in gxsubmit_creators by this process, and those looked up there
        self._creators_recorded: set[str] = set()
        self._creators_recording: dict[str, asyncio.Future[None]] = {}
        self._creators_looked_up: dict[str, asyncio.Future[bytes | None]] = {}
        self._proposal_cap = 4096
        self.n_committed = 0
        self.n_failed = 0
        self.last_error: str | None = None
        self.gateway_ok = True
        self._info = log.isEnabledFor(logging.INFO)

    def next_retry_in(self, now: float, claimed_at: float) -> float | None:
        """Seconds until the earliest put-back row is due; forgets those a claim at ``claimed_at``
        (monotonic) already saw as due. None when nothing is pending."""
        due = self.retry_due
        while due and due[0] <= claimed_at:
            heapq.heappop(due)
        if not due:
            return None
        return max(0.0, due[0] - now) + _RETRY_WAKE_SLACK_S

    # -- entry -------------------------------------------------------------------------------------

    async def run(self, job: Job) -> None:
        """Process one job to a row outcome. Never raises except CancelledError."""
        try:
            await self._process(job)
        except (_Gone, DbUnavailable):
            pass  # lease lost / db gone at shutdown: the row is someone else's (or retried after expiry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("Unexpected error processing command", extra={
                "command_id": str(job.cmd.id), "tx_id": job.tx_id})
            self.last_error = f"internal: {type(exc).__name__}: {exc}"
            try:
                await self._retry(job, Action("retry", "INTERNAL_ERROR", on_ledger=job.may_be_on_ledger,
                                              reason="internal"), f"{type(exc).__name__}: {exc}")
            except (_Gone, DbUnavailable):
                pass

    async def _process(self, job: Job) -> None:
        cmd = job.cmd
        job.stage = Stage.PREPARING
        route = self.catalog.route(cmd.command_type)
        if route is None:
            await self._fail(job, "UNROUTABLE", f"no catalogue route for command type {cmd.command_type!r}")
            return
        if route.identity != self.settings.identity:
            # Catalogue changed under a running worker: hand the row back to whoever serves it now.
            await self.db.call(lambda st: st.release([job.lease]))
            return
        crashes = self.settings.max_worker_crashes
        if crashes is not None and cmd.submitted_before:
            crashes *= 2  # as release_crashed: its next try finds a committed copy instead (queries.sql)
        if crashes is not None and cmd.crashed_claims >= crashes:
            # taken over from expired leases this often: its holders died or hung (migration 0009)
            await self._fail_early(job, "WORKER_CRASH", f"its worker died or hung in {cmd.crashed_claims} "
                                                        "claims of this row")
            return
        if isinstance(cmd.payload, BadPayload):
            await self._fail_early(job, cmd.payload.code, cmd.payload.reason)
            return
        try:
            args = route.build_args(cmd.payload)
        except PayloadError as exc:
            await self._fail(job, "PAYLOAD_INVALID", str(exc))
            return
        except (ValueError, RecursionError) as exc:  # e.g. str() of an integer past 4300 digits
            await self._fail(job, "PAYLOAD_INVALID", f"payload cannot be turned into arguments: "
                                                     f"{type(exc).__name__}: {str(exc)[:120]}")
            return
        limit = self.settings.max_argument_bytes
        if limit is not None:
            size = sum(len(a) for a in args)
            if size * 4 > limit:  # a character is at most 4 UTF-8 bytes: count only when it matters
                size = sum(len(a.encode("utf-8", "surrogatepass")) for a in args)
            if size > limit:
                await self._fail_early(job, "PAYLOAD_TOO_LARGE", f"chaincode arguments are {size} bytes, "
                                       f"over the limit of {limit} (max_argument_bytes)")
                return

        channel = self.settings.channel or route.channel
        chosen = await self._choose_tx(job, route, args)
        walked = 0
        while chosen is not None:
            nonce, tx_id, signer = chosen
            job.tx_id = tx_id
            if self._info:
                log.info("Processing command", extra={
                    "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": tx_id,
                    "attempt": cmd.attempts, "generation": job.generation})

            if not self.breaker.allow():
                await self._retry(job, Action("retry", "BREAKER_OPEN", counts=False,
                                              on_ledger=job.may_be_on_ledger, reason="breaker_open"),
                                  "gateway circuit breaker open", delay=self.breaker.remaining() + 0.5)
                return

            proposal = self._proposal(route, signer, args, nonce, tx_id)
            limit = self.settings.max_proposal_bytes
            if limit is not None and len(proposal.signed_proposal.proposal_bytes) > limit:
                self._proposals.pop(tx_id, None)
                size = len(proposal.signed_proposal.proposal_bytes)
                await self._fail_early(job, "PAYLOAD_TOO_LARGE", f"signed proposal is {size} bytes, over the "
                                       f"limit of {limit} (max_proposal_bytes)")
                return
            job.stage = Stage.ENDORSING
            t0 = time.perf_counter()
            try:
                prepared = await self.gateway.endorse(proposal)
            except FabricError as err:
                self._note_gateway(err)
                if err.error_class is ErrorClass.DUPLICATE:
                    # The ledger holds this tx id: it decides, not the table (which may have lost it).
                    if walked >= _WALK_LIMIT:
                        await self._retry(job, Action("retry", "DUPLICATE_TXID", counts=False, on_ledger=True,
                                                      reason="in_doubt"),
                                          f"walked {walked} INVALID generations; continuing later")
                        return
                    walked += 1
                    chosen = await self._resolve_duplicate(job, channel, route, args, tx_id, signer)
                    continue
                await self._on_error(job, err, signer, proposal.channel)
                return
            break
        else:
            return
        self._gateway_up()
        self.metrics.endorse.observe(time.perf_counter() - t0)

        # Write-ahead: from here on a copy may exist on the ledger.
        job.stage = Stage.SUBMITTING
        job.may_be_on_ledger = True
        await self._record_creator(signer)  # once per creator and process: before a row names it
        stored_fp, stored_nonce = signer.creator_fingerprint, None
        if cmd.tx_nonce is not None and nonce == cmd.tx_nonce:
            # a stored nonce (before 0008) is kept, with its row's fingerprint and expiry
            stored_fp, stored_nonce = cmd.creator_fingerprint or stored_fp, cmd.tx_nonce
        if not await self.submitted.put(SubmittedTx(
                cmd.id, cmd.lease_token, tx_id, job.generation, stored_fp,
                self.ring.not_after(signer.creator_fingerprint), stored_nonce)):
            raise _Gone
        # The wait is registered before Submit, so the block with this tx cannot pass unseen.
        watcher = self.watchers.get(proposal.channel)
        watch = watcher.expect(tx_id) if watcher is not None else None
        t0 = time.perf_counter()
        try:
            await self.gateway.submit(signer, prepared)
        except FabricError as err:
            if watcher is not None:
                watcher.forget(tx_id)
            self._note_gateway(err)
            await self._on_error(job, err, signer, proposal.channel)
            return
        self.metrics.submit.observe(time.perf_counter() - t0)
        self._proposals.pop(tx_id, None)
        await self._wait_commit(job, signer, proposal.channel, tx_id, watch)

    def _finishing(self, job: Job) -> None:
        job.stage = Stage.FINISHING
        if self._on_finishing is not None:
            self._on_finishing()

    # -- nonce -------------------------------------------------------------------------------------

    def _derive(self, job: Job, route: Route, args: Sequence[str]) -> bytes:
        cmd = job.cmd
        return self.deriver.nonce(
            tenant_id=cmd.tenant_id, request_id=cmd.request_id,
            channel=self.settings.channel or route.channel,
            chaincode=self.settings.chaincode or route.chaincode,
            function=route.function, args=args, generation=job.generation)

    async def _choose_tx(self, job: Job, route: Route, args: Sequence[str]
                         ) -> tuple[bytes, str, SigningIdentity] | None:
        """(nonce, tx id, signer) of this attempt, or None when the row was handled here (committed, or
        put back until its stored tx id can be resolved). Writes nothing: the nonce can be derived again."""
        cmd = job.cmd
        job.may_be_on_ledger = cmd.submitted_before
        job.generation = cmd.tx_generation
        signers = self.ring.signers()
        # A stored nonce (rows from before 0008) is kept; otherwise the derived one.
        nonce = cmd.tx_nonce if cmd.tx_nonce is not None else self._derive(job, route, args)
        signer = reproducing_signer(nonce, cmd.fabric_tx_id, signers)
        if signer is None and await self._learn_former_creator(cmd.creator_fingerprint):
            signer = reproducing_signer(nonce, cmd.fabric_tx_id, self.ring.signers())
        if signer is not None:
            return nonce, compute_tx_id(nonce, signer.creator), signer
        assert cmd.fabric_tx_id is not None
        # No identity we hold makes the stored tx id from this nonce (a rotated or re-encoded certificate,
        # another MSP id, a changed catalogue): first find out what became of the stored one.
        if await self._resolve_old(job, cmd.fabric_tx_id) is None:
            return None  # committed, or parked until the old tx id can be resolved
        if cmd.tx_nonce is not None:
            nonce = self._derive(job, route, args)
        signer = self.ring.current
        job.may_be_on_ledger = False  # a tx id other than the stored one: never handed to an orderer by us
        return nonce, compute_tx_id(nonce, signer.creator), signer

    async def _learn_former_creator(self, fingerprint: str | None) -> bool:
        """Whether the ring now holds the creator a row names: the same key under other creator bytes (a
        re-encoded certificate) can sign as the recorded creator and so reproduce the stored tx id."""
        if fingerprint is None or self.ring.holds(fingerprint):
            return False
        # One lookup per fingerprint and process; the jobs that ask meanwhile wait for its answer.
        lookup = self._creators_looked_up.get(fingerprint)
        if lookup is not None:
            await asyncio.shield(lookup)
            return self.ring.holds(fingerprint)
        lookup = self._creators_looked_up[fingerprint] = asyncio.ensure_future(
            self.db.call(lambda st: st.find_creator(fingerprint)))
        lookup.add_done_callback(_retrieved)
        try:
            creator = await asyncio.shield(lookup)
        except BaseException:
            self._creators_looked_up.pop(fingerprint, None)  # asked again by the next row that names it
            raise
        if creator is None:
            return False
        for held in self.ring.signers():
            twin = held.as_creator(creator)
            if twin is not None:
                self.ring.add_former(twin, self.ring.not_after(held.creator_fingerprint) or datetime.now(UTC))
                log.info("Signing as the recorded creator of the same key", extra={
                    "creator": fingerprint[:16], "fingerprint": held.fingerprint[:16]})
                return True
        return False

    async def _record_creator(self, signer: SigningIdentity) -> None:
        """Once per creator and process, and once for all the jobs that get here together: hundreds of
        first jobs each sending the same insert cost a round trip apiece on the one connection, which
        far from the database held every other statement past its deadline (bench/run.py wan)."""
        fp = signer.creator_fingerprint
        if fp in self._creators_recorded:
            return
        pending = self._creators_recording.get(fp)
        if pending is None:
            pending = self._creators_recording[fp] = asyncio.ensure_future(
                self.db.call(lambda st: st.record_creator(fp, signer.creator)))
            pending.add_done_callback(lambda t: self._recorded(fp, t))
        await asyncio.shield(pending)

    def _recorded(self, fp: str, task: asyncio.Future[None]) -> None:
        self._creators_recording.pop(fp, None)
        if not task.cancelled() and task.exception() is None:
            self._creators_recorded.add(fp)

    async def _resolve_duplicate(self, job: Job, channel: str, route: Route,
                                 args: Sequence[str], tx_id: str, signer: SigningIdentity
                                 ) -> tuple[bytes, str, SigningIdentity] | None:
        """The endorser says the ledger already holds ``tx_id``: VALID is this command's effect
        (COMMITTED with that block); definitely INVALID moves to the next generation, returned to be
        endorsed at once; anything else puts the row back (None)."""
        job.may_be_on_ledger = True
        job.stage = Stage.COMMIT_WAIT
        try:
            result = await self.gateway.commit_status(signer, channel=channel, tx_id=tx_id,
                                                      timeout=self.settings.resolve_timeout)
        except FabricError as err:
            self._note_gateway(err)
            await self._retry(job, Action("retry", err.error_code, counts=False, on_ledger=True,
                                          reason="in_doubt"), f"duplicate tx {tx_id} unresolved: {err}")
            return None
        self._gateway_up()
        if result.valid:
            await self._committed(job, result)
            return None
        if classify_validation_code(result.code) in (ErrorClass.DUPLICATE, ErrorClass.TRANSIENT):
            await self._retry(job, Action("retry", result.code_name, counts=False, on_ledger=True,
                                          reason="in_doubt"),
                              f"duplicate tx {tx_id} status {result.code_name}")
            return None
        # Definitely INVALID on the ledger: that generation is spent (a restore may have forgotten it).
        log.info("Transaction id already INVALID on the ledger, next generation", extra={
            "command_id": str(job.cmd.id), "tx_id": tx_id, "generation": job.generation,
            "validation_code": result.code_name, "block": result.block_number})
        job.generation += 1
        job.may_be_on_ledger = False
        nonce = self._derive(job, route, args)
        current = self.ring.current
        return nonce, compute_tx_id(nonce, current.creator), current

    async def _resolve_old(self, job: Job, old_tx_id: str) -> bool | None:
        """True = the old tx id is definitely not VALID on the ledger (draw a new nonce);
        None = handled here (committed, or retried later)."""
        job.tx_id = old_tx_id
        try:
            result = await self.gateway.commit_status(
                self.ring.current, channel=self._channel_for(job), tx_id=old_tx_id,
                timeout=self.settings.resolve_timeout)
        except FabricError as err:
            cmd = job.cmd
            if not cmd.submitted_before:
                return True  # write-ahead: never handed to the orderer, so it cannot be on the ledger
            not_after = cmd.creator_not_after or self.ring.not_after(cmd.creator_fingerprint)
            if creator_long_expired(not_after, datetime.now(UTC)) and await self._ledger_lacks(
                    self._channel_for(job), old_tx_id):
                assert not_after is not None
                log.warning("Old transaction can no longer commit, submitting anew", extra={
                    "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": old_tx_id,
                    "certificate_expired": not_after.isoformat(), "error": str(err)})
                return True
            # WINDOW: the row was submitted under a certificate this process no longer holds and
            # the ledger does not know that tx id (yet). It stays PENDING, re-checked at the capped
            # backoff, never re-submitted under a new tx id and never dead-lettered, until that
            # certificate has been expired for EXPIRED_CREATOR_GRACE and the peer's ledger says it
            # holds no such tx id (above).
            until = (f"; a new tx id is drawn if the ledger still lacks it after "
                     f"{(not_after + EXPIRED_CREATOR_GRACE):%Y-%m-%dT%H:%M:%SZ}" if not_after else
                     "; that certificate's expiry is not recorded (recorded before schema version 4, "
                     "or by a release from before it)")
            await self._retry(job, Action("retry", "ROTATION_UNRESOLVED", counts=False, on_ledger=True,
                                          reason="in_doubt"),
                              f"tx {old_tx_id} (previous certificate) unresolved: {err}{until}")
            return None
        if result.valid:
            await self._committed(job, result)
            return None
        cls = classify_validation_code(result.code)
        if cls in (ErrorClass.DUPLICATE, ErrorClass.TRANSIENT):
            await self._retry(job, Action("retry", "ROTATION_UNRESOLVED", counts=False, on_ledger=True,
                                          reason="in_doubt"),
                              f"tx {old_tx_id} (previous certificate) status {result.code_name}")
            return None
        return True  # definitely invalid: a new tx is the only way to get the effect

    async def _ledger_lacks(self, channel: str, tx_id: str) -> bool:
        """Whether the gateway peer's ledger positively holds no transaction ``tx_id``. A CommitStatus
        deadline alone cannot say that: it also runs out when the call never reached a working peer.
        Found (the next CommitStatus reports its outcome) or no answer: False, the row keeps waiting."""
        try:
            return not await self.gateway.transaction_known(self.ring.current, channel=channel, tx_id=tx_id)
        except FabricError:
            return False

    def _channel_for(self, job: Job) -> str:
        route = self.catalog.route(job.cmd.command_type)
        return self.settings.channel or (route.channel if route else "")

    def _proposal(self, route: Route, signer: SigningIdentity, args: Sequence[str], nonce: bytes,
                  tx_id: str) -> Proposal:
        now = time.monotonic()
        hit = self._proposals.get(tx_id)
        if hit is not None and now - hit[1] < _PROPOSAL_TTL_S:
            return hit[0]
        p = build_proposal(
            signer,
            channel=self.settings.channel or route.channel,
            chaincode=self.settings.chaincode or route.chaincode,
            function=route.function,
            args=args,
            nonce=nonce,
            endorsing_orgs=self.settings.endorsing_orgs,
        )
        self._proposals[tx_id] = (p, now)
        if len(self._proposals) > self._proposal_cap:
            self._proposals.popitem(last=False)
        return p

    # -- commit ------------------------------------------------------------------------------------

    async def _wait_commit(self, job: Job, signer: SigningIdentity, channel: str, tx_id: str,
                           watch: asyncio.Future[CommitResult | None] | None = None) -> None:
        job.stage = Stage.COMMIT_WAIT
        t0 = time.perf_counter()
        if watch is not None:
            # None: the stream broke, showed a later copy, or brought no block with it within the
            # commit timeout; CommitStatus decides then, exactly as without a stream.
            result = await watch
            if result is not None:
                self._gateway_up()
                self.metrics.commit.observe(time.perf_counter() - t0)
                await self._on_commit(job, result)
                return
        try:
            result = await self.gateway.commit_status(signer, channel=channel, tx_id=tx_id)
        except FabricError as err:
            self._note_gateway(err)
            await self._retry(job, Action("retry", err.error_code, counts=False, on_ledger=True,
                                          reason="in_doubt"), str(err))
            return
        self._gateway_up()
        self.metrics.commit.observe(time.perf_counter() - t0)
        await self._on_commit(job, result)

    async def _on_commit(self, job: Job, result: CommitResult) -> None:
        action = commit_action(result.code, result.code_name, job.cmd.counted_attempts)
        if action.kind == "commit":
            await self._committed(job, result)
        elif action.kind == "retry":
            await self._retry(job, action, f"transaction {result.tx_id} {result.code_name} in block "
                                           f"{result.block_number}",
                              delay=self.settings.conflict_delay * (2 ** min(job.cmd.attempts, 6))
                              if action.burn_nonce else None)
        else:
            await self._fail(job, action.error_code,
                             f"transaction {result.tx_id} invalid: {result.code_name} in block "
                             f"{result.block_number}", tx_id=result.tx_id, validation_code=result.code_name)

    async def _committed(self, job: Job, result: CommitResult) -> None:
        self._finishing(job)
        cmd = job.cmd
        # The committed counter is incremented by the batch write itself (worker._flush_committed).
        ok = await self.committed.put((Committed(cmd.id, cmd.lease_token, result.tx_id, result.block_number,
                                                 result.code_name), cmd.command_type))
        if not ok:
            raise _Gone
        self.n_committed += 1
        self.metrics.latency.observe(max(0.0, (datetime.now(UTC) - cmd.created_at).total_seconds()))
        if self._info:
            log.info("Command committed", extra={
                "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": result.tx_id,
                "block": result.block_number, "attempt": cmd.attempts})

    # -- errors ------------------------------------------------------------------------------------

    async def _on_error(self, job: Job, err: FabricError, signer: SigningIdentity, channel: str) -> None:
        action = error_action(err, may_be_on_ledger=job.may_be_on_ledger)
        if action.kind == "resolve":
            assert job.tx_id is not None
            await self._resolve_before_fail(job, err, signer, channel, job.tx_id)
        elif action.kind == "retry":
            await self._retry(job, action, str(err))
        else:
            await self._fail(job, action.error_code, str(err), tx_id=job.tx_id)

    async def _resolve_before_fail(self, job: Job, err: FabricError, signer: SigningIdentity, channel: str,
                                   tx_id: str) -> None:
        """A permanent error on a row whose tx id may be on the ledger: only a definite ledger answer
        may fail it (a VALID first copy means it is committed)."""
        if err.error_class is ErrorClass.DUPLICATE:
            await self._wait_commit(job, signer, channel, tx_id)
            return
        if err.stage == "submit" and not job.cmd.submitted_before:
            # The gateway refused the only copy there has ever been (this try's, written SUBMITTED just
            # before): the ledger cannot hold it, so there is nothing to resolve.
            await self._fail(job, err.error_code, str(err), tx_id=tx_id)
            return
        # An earlier try's copy may be on the ledger. While the gateway answers, each such try counts,
        # so a copy it refuses every time ends within max_attempts (FAILED, tx id kept: see _retry).
        try:
            result = await self.gateway.commit_status(signer, channel=channel, tx_id=tx_id,
                                                      timeout=self.settings.resolve_timeout)
        except FabricError as err2:
            # Not noted for the breaker: a deadline is the expected answer for a tx id the ledger lacks.
            infra = err2.error_code in INFRA_ERROR_CODES or err2.stage == "connect"
            await self._retry(job, Action("retry", err.error_code, counts=not infra, on_ledger=True,
                                          reason="in_doubt", refused=True),
                              f"{err} (earlier copy {tx_id} unresolved: {err2.error_code})")
            return
        if result.valid:
            await self._committed(job, result)
        elif classify_validation_code(result.code) in (ErrorClass.DUPLICATE, ErrorClass.TRANSIENT):
            await self._retry(job, Action("retry", err.error_code, counts=False, on_ledger=True,
                                          reason="in_doubt"), str(err))
        else:
            await self._fail(job, err.error_code, f"{err} (earlier copy {tx_id}: {result.code_name})",
                             tx_id=tx_id)

    async def _retry(self, job: Job, action: Action, error: str, *, delay: float | None = None) -> None:
        cmd = job.cmd
        self._finishing(job)
        self.last_error = f"{action.error_code}: {error}"[:500]
        on_ledger = action.on_ledger or job.may_be_on_ledger
        # Counted attempts only: the claims of retries that do not count are given back (migration 0006).
        exhausted = action.counts and cmd.counted_attempts >= self.settings.max_attempts
        if exhausted and not on_ledger:
            tries = f" ({cmd.attempts} tries in all)" if cmd.attempts != cmd.counted_attempts else ""
            await self._fail(job, "RETRIES_EXHAUSTED", f"after {cmd.counted_attempts} attempts{tries}: "
                                                       f"{action.error_code}: {error}", tx_id=job.tx_id)
            return
        if exhausted and action.refused:
            # Bounded even though an earlier copy may be on the ledger: the row keeps its tx id (and
            # nonce), so a requeue re-endorses that same tx id and finds a committed copy instead of
            # adding one (with derived tx ids, the same generation re-derives it).
            await self._fail(job, action.error_code, f"{error}; after {cmd.counted_attempts} attempts, "
                             f"transaction {job.tx_id} is unresolved: an earlier copy may be on the ledger, "
                             "a requeue resolves it before sending again", tx_id=job.tx_id)
            return
        if in_doubt_expired(action, cmd.submitted_at, datetime.now(UTC), self.settings.in_doubt_limit):
            await self._fail(job, "IN_DOUBT_UNRESOLVED",
                             f"{action.error_code}: {error}; transaction {job.tx_id} has had no definite "
                             f"ledger answer for over {self.settings.in_doubt_limit:g} s since it was first "
                             "submitted: it may still be on the ledger, a requeue resolves it before "
                             "sending again", tx_id=job.tx_id)
            return
        if delay is None:
            # A row that may be on the ledger and ran out of attempts keeps being resolved, slowly.
            delay = self.backoff_cap if exhausted else self.backoff(cmd.attempts)
        ok = await self.db.call(lambda st: st.retry_later(
            cmd.id, cmd.lease_token, error_code=action.error_code, error=error, delay_s=delay,
            burn_nonce=action.burn_nonce, counts=action.counts,
            generation=job.generation + 1 if action.burn_nonce else job.generation))
        if not ok:
            raise _Gone
        # The claim loop wakes at this row's next_attempt_at (NOTIFY only covers new rows).
        heapq.heappush(self.retry_due, time.monotonic() + delay)
        self.metrics.retried(action.reason or "transient")
        log.warning("Command failed, will retry", extra={
            "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": job.tx_id,
            "error_code": action.error_code, "attempt": cmd.attempts, "retry_in_s": round(delay, 3),
            "new_nonce": action.burn_nonce, "generation": job.generation, "error": error})

    async def _fail_early(self, job: Job, error_code: str, error: str) -> None:
        """Fail a row before this try sent anything; say so when an earlier try's copy may be on the
        ledger (its tx id stays in the row, so a requeue resolves it first)."""
        cmd = job.cmd
        if cmd.submitted_before and cmd.fabric_tx_id:
            error += (f"; transaction {cmd.fabric_tx_id} of an earlier try may be on the ledger: a requeue "
                      "resolves it before sending again")
        await self._fail(job, error_code, error)

    async def _fail(self, job: Job, error_code: str, error: str, *, tx_id: str | None = None,
                    validation_code: str | None = None) -> None:
        cmd = job.cmd
        self._finishing(job)
        tx_id = tx_id or job.tx_id
        ok = await self.db.call(lambda st: st.mark_failed(
            cmd.id, cmd.lease_token, error_code=error_code, error=error, tx_id=tx_id,
            validation_code=validation_code))
        if not ok:
            raise _Gone
        self.n_failed += 1
        self.last_error = f"{error_code}: {error}"[:500]
        self.metrics.failed(cmd.command_type, error_code)
        log.error("Command failed", extra={
            "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": tx_id,
            "error_code": error_code, "attempt": cmd.attempts, "error": error})

    # -- gateway health ----------------------------------------------------------------------------

    def _note_gateway(self, err: FabricError) -> None:
        if err.error_class in (ErrorClass.TRANSIENT, ErrorClass.IN_DOUBT) and (
            err.error_code in INFRA_ERROR_CODES or err.error_code == "DEADLINE_EXCEEDED"
        ):
            self.gateway_ok = False
            if self.breaker.record_failure():
                self.metrics.breaker_open.set(1)
                log.warning("Gateway circuit breaker opened; pausing claims", extra={
                    "error": str(err), "cooldown_s": round(self.breaker.remaining(), 3)})
        else:
            self._gateway_up()  # the gateway answered (e.g. a chaincode error): it is up

    def note_probe(self, err: FabricError | None) -> None:
        """The outcome of an idle gateway probe (:mod:`gxsubmit.gatewayprobe`), counted like a call's."""
        if err is None:
            self._gateway_up()
        else:
            self._note_gateway(err)

    def _gateway_up(self) -> None:
        self.gateway_ok = True
        if not self.breaker.is_closed:
            self.breaker.record_success()
            self.metrics.breaker_open.set(0)
            log.info("Gateway circuit breaker closed; resuming claims")
        else:
            self.breaker.record_success()
