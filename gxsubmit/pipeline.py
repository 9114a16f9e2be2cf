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

The parts: this module is the main path of one try (prepare, endorse, write-ahead, submit, wait for
the commit); :mod:`gxsubmit.resolve` finds out what became of a tx id that may be on the ledger;
:mod:`gxsubmit.outcomes` writes what the try ends in to the row; :mod:`gxsubmit.decisions` holds the
pure decisions they act on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from gxsubmit.catalog import Catalog, PayloadError, Route
from gxsubmit.dblink import Batcher, DbLink, DbUnavailable
from gxsubmit.decisions import Action, error_action
from gxsubmit.fabric import (
    CommitResult,
    ErrorClass,
    FabricError,
    GatewayClient,
    Proposal,
    SigningIdentity,
    build_proposal,
)
from gxsubmit.fabric.commits import CommitWatcher
from gxsubmit.gatewayhealth import GatewayHealth
from gxsubmit.identityring import IdentityRing
from gxsubmit.job import Job, LeaseLost, PipelineSettings, Stage
from gxsubmit.metrics import WorkerMetrics
from gxsubmit.outbox import SubmittedTx
from gxsubmit.outcomes import Outcomes
from gxsubmit.resolve import Resolver
from gxsubmit.rowdecode import BadPayload
from gxsubmit.singleflight import SingleFlight
from gxsubmit.txid import TxIdDeriver

__all__ = ["Pipeline"]

log = logging.getLogger("gxsubmit.pipeline")

#: Generations one claim may walk through on "duplicate transaction" answers whose tx id the ledger holds
#: as INVALID (after a restore, the row's generation can be behind the ledger's); then it goes back.
_WALK_LIMIT = 16
#: Proposal reuse window: Fabric 3 peers reject proposals older than 15 minutes.
_PROPOSAL_TTL_S = 300.0


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
        health: GatewayHealth,
        metrics: WorkerMetrics,
        outcomes: Outcomes,
        submitted: Batcher[SubmittedTx],
        deriver: TxIdDeriver,
        watchers: Mapping[str, CommitWatcher] | None = None,
    ) -> None:
        self.settings = settings
        #: channel -> its filtered-block stream (empty: one CommitStatus call per transaction)
        self.watchers: Mapping[str, CommitWatcher] = watchers or {}
        self.catalog = catalog
        self.db = db
        self.gateway = gateway
        self.ring = ring
        self.health = health
        self.breaker = health.breaker
        self.metrics = metrics
        self.outcomes = outcomes
        self.submitted = submitted
        self.resolver = Resolver(settings=settings, catalog=catalog, db=db, gateway=gateway, ring=ring,
                                 health=health, outcomes=outcomes, deriver=deriver,
                                 wait_commit=self._wait_commit)
        self._proposals: OrderedDict[str, tuple[Proposal, float]] = OrderedDict()
        #: creator fingerprints recorded in gxsubmit_creators by this process
        self._creators_recorded: set[str] = set()
        self._recording: SingleFlight[str, None] = SingleFlight()
        self._proposal_cap = 4096
        self._info = log.isEnabledFor(logging.INFO)

    # -- entry -------------------------------------------------------------------------------------

    async def run(self, job: Job) -> None:
        """Process one job to a row outcome. Never raises except CancelledError."""
        try:
            await self._process(job)
        except (LeaseLost, DbUnavailable):
            pass  # lease lost / db gone at shutdown: the row is someone else's (or retried after expiry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("Unexpected error processing command", extra={
                "command_id": str(job.cmd.id), "tx_id": job.tx_id})
            self.outcomes.last_error = f"internal: {type(exc).__name__}: {exc}"
            try:
                await self.outcomes.retry(job, Action("retry", "INTERNAL_ERROR", reason="internal",
                                                      on_ledger=job.may_be_on_ledger),
                                          f"{type(exc).__name__}: {exc}")
            except (LeaseLost, DbUnavailable):
                pass

    async def _process(self, job: Job) -> None:
        cmd = job.cmd
        out = self.outcomes
        job.stage = Stage.PREPARING
        route = self.catalog.route(cmd.command_type)
        if route is None:
            await out.fail(job, "UNROUTABLE", f"no catalogue route for command type {cmd.command_type!r}")
            return
        if route.identity != self.settings.identity:
            # Catalogue changed under a running worker: hand the row back to whoever serves it now.
            await self.db.call(lambda st: st.release([job.lease]))
            return
        crashes = self.settings.max_worker_crashes
        if crashes is not None and cmd.submitted_before:
            crashes *= 2  # as release_crashed: its next try finds a committed copy instead (queries.sql)
        # A row gets here at the limit only through takeovers from expired leases (the supervisor's
        # release_crashed ends it at the limit itself, after a run alone). An expired lease is weaker
        # evidence than a death the supervisor saw: the holder may have been cut off from the database
        # or frozen, not killed by the row (the 30-minute soak dead-lettered 7 rows so), hence twice.
        if crashes is not None and cmd.crashed_claims >= 2 * crashes:
            await out.fail_early(job, "WORKER_CRASH", f"its holders died, hung or were cut off in "
                                                      f"{cmd.crashed_claims} claims of this row")
            return
        if isinstance(cmd.payload, BadPayload):
            await out.fail_early(job, cmd.payload.code, cmd.payload.reason)
            return
        try:
            args = route.build_args(cmd.payload)
        except PayloadError as exc:
            await out.fail(job, "PAYLOAD_INVALID", str(exc))
            return
        except (ValueError, RecursionError) as exc:  # e.g. str() of an integer past 4300 digits
            await out.fail(job, "PAYLOAD_INVALID", f"payload cannot be turned into arguments: "
                                                   f"{type(exc).__name__}: {str(exc)[:120]}")
            return
        limit = self.settings.max_argument_bytes
        if limit is not None:
            size = sum(len(a) for a in args)
            if size * 4 > limit:  # a character is at most 4 UTF-8 bytes: count only when it matters
                size = sum(len(a.encode("utf-8", "surrogatepass")) for a in args)
            if size > limit:
                await out.fail_early(job, "PAYLOAD_TOO_LARGE", f"chaincode arguments are {size} bytes, "
                                     f"over the limit of {limit} (max_argument_bytes)")
                return

        channel = self.settings.channel or route.channel
        chosen = await self.resolver.choose_tx(job, route, args)
        walked = 0
        while chosen is not None:
            nonce, tx_id, signer = chosen
            job.tx_id = tx_id
            if self._info:
                log.info("Processing command", extra={
                    "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": tx_id,
                    "attempt": cmd.attempts, "generation": job.generation})

            if not self.breaker.allow():
                await out.retry(job, Action("retry", "BREAKER_OPEN", counts=False,
                                            on_ledger=job.may_be_on_ledger, reason="breaker_open"),
                                "gateway circuit breaker open", delay=self.breaker.remaining() + 0.5)
                return

            proposal = self._proposal(route, signer, args, nonce, tx_id)
            limit = self.settings.max_proposal_bytes
            if limit is not None and len(proposal.signed_proposal.proposal_bytes) > limit:
                self._proposals.pop(tx_id, None)
                size = len(proposal.signed_proposal.proposal_bytes)
                await out.fail_early(job, "PAYLOAD_TOO_LARGE", f"signed proposal is {size} bytes, over the "
                                     f"limit of {limit} (max_proposal_bytes)")
                return
            job.stage = Stage.ENDORSING
            t0 = time.perf_counter()
            try:
                prepared = await self.gateway.endorse(proposal)
            except FabricError as err:
                self.health.note(err)
                if err.error_class is ErrorClass.DUPLICATE:
                    # The ledger holds this tx id: it decides, not the table (which may have lost it).
                    if walked >= _WALK_LIMIT:
                        await out.retry(job, Action("retry", "DUPLICATE_TXID", counts=False, on_ledger=True,
                                                    reason="in_doubt"),
                                        f"walked {walked} INVALID generations; continuing later")
                        return
                    walked += 1
                    chosen = await self.resolver.resolve_duplicate(job, channel, route, args, tx_id, signer)
                    continue
                await self._on_error(job, err, signer, proposal.channel)
                return
            break
        else:
            return
        self.health.up()
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
            raise LeaseLost
        # The wait is registered before Submit, so the block with this tx cannot pass unseen.
        watcher = self.watchers.get(proposal.channel)
        watch = watcher.expect(tx_id) if watcher is not None else None
        t0 = time.perf_counter()
        try:
            await self.gateway.submit(signer, prepared)
        except FabricError as err:
            if watcher is not None:
                watcher.forget(tx_id)
            self.health.note(err)
            await self._on_error(job, err, signer, proposal.channel)
            return
        self.metrics.submit.observe(time.perf_counter() - t0)
        self._proposals.pop(tx_id, None)
        await self._wait_commit(job, signer, proposal.channel, tx_id, watch)

    # -- write-ahead, proposal ------------------------------------------------------------------------

    async def _record_creator(self, signer: SigningIdentity) -> None:
        """Once per creator and process, and once for all the jobs that get here together (a far
        database made a queue of the same insert outlast the statement deadline: bench/run.py wan)."""
        fp = signer.creator_fingerprint
        if fp not in self._creators_recorded:
            await self._recording.run(
                fp, lambda: self.db.call(lambda st: st.record_creator(fp, signer.creator)))
            self._creators_recorded.add(fp)

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
                self.health.up()
                self.metrics.commit.observe(time.perf_counter() - t0)
                await self.outcomes.on_commit(job, result)
                return
        try:
            result = await self.gateway.commit_status(signer, channel=channel, tx_id=tx_id)
        except FabricError as err:
            self.health.note(err)
            await self.outcomes.retry(job, Action("retry", err.error_code, counts=False, on_ledger=True,
                                                  reason="in_doubt"), str(err))
            return
        self.health.up()
        self.metrics.commit.observe(time.perf_counter() - t0)
        await self.outcomes.on_commit(job, result)

    async def _on_error(self, job: Job, err: FabricError, signer: SigningIdentity, channel: str) -> None:
        action = error_action(err, may_be_on_ledger=job.may_be_on_ledger)
        if action.kind == "resolve":
            assert job.tx_id is not None
            await self.resolver.resolve_before_fail(job, err, signer, channel, job.tx_id)
        elif action.kind == "retry":
            await self.outcomes.retry(job, action, str(err))
        else:
            await self.outcomes.fail(job, action.error_code, str(err), tx_id=job.tx_id)
