"""Finding out what became of a transaction id that may be on the ledger, before acting on the row.

The pipeline (:mod:`gxsubmit.pipeline`) asks here which tx id a try uses (the row's stored one when an
identity we hold reproduces it; otherwise the stored one is resolved first), what a "duplicate
transaction" answer means (VALID: committed; definitely INVALID: the next generation), and whether a
row with a permanent error may be failed (only on a definite answer for a copy that may be on the
ledger). Never endorses a tx id other than the row's stored one without a ledger answer for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from gxsubmit.catalog import Catalog, Route
from gxsubmit.dblink import DbLink
from gxsubmit.decisions import (
    EXPIRED_CREATOR_GRACE,
    INFRA_ERROR_CODES,
    Action,
    creator_long_expired,
    reproducing_signer,
)
from gxsubmit.fabric import (
    CommitResult,
    ErrorClass,
    FabricError,
    GatewayClient,
    SigningIdentity,
    classify_validation_code,
    compute_tx_id,
)
from gxsubmit.gatewayhealth import GatewayHealth
from gxsubmit.identityring import IdentityRing
from gxsubmit.job import Job, PipelineSettings, Stage
from gxsubmit.outcomes import Outcomes
from gxsubmit.singleflight import SingleFlight
from gxsubmit.txid import TxIdDeriver

__all__ = ["Chosen", "Resolver", "WaitCommit"]

#: The pipeline's logger: these lines were always the pipeline's, and log filters name it.
log = logging.getLogger("gxsubmit.pipeline")

#: A row whose stored tx id, made under a certificate no longer held, has no definite answer yet.
_rotation_unresolved = Action("retry", "ROTATION_UNRESOLVED", counts=False, on_ledger=True, reason="in_doubt")
#: (nonce, tx id, signer) of a try
Chosen = tuple[bytes, str, SigningIdentity]
#: the pipeline's commit wait: (job, signer, channel, tx id, the block stream's future or None)
WaitCommit = Callable[[Job, SigningIdentity, str, str, asyncio.Future[CommitResult | None] | None],
                      Awaitable[None]]


class Resolver:
    """Resolves a row's tx id against the ledger; the row's outcome goes through ``Outcomes``."""

    def __init__(
        self,
        *,
        settings: PipelineSettings,
        catalog: Catalog,
        db: DbLink,
        gateway: GatewayClient,
        ring: IdentityRing,
        health: GatewayHealth,
        outcomes: Outcomes,
        deriver: TxIdDeriver,
        wait_commit: WaitCommit,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.db = db
        self.gateway = gateway
        self.ring = ring
        self.health = health
        self.outcomes = outcomes
        self.deriver = deriver
        self._wait_commit = wait_commit
        #: creator fingerprints this process looked up in gxsubmit_creators
        self._creators_looked_up: set[str] = set()
        self._looking_up: SingleFlight[str, bytes | None] = SingleFlight()

    def _derive(self, job: Job, route: Route, args: Sequence[str]) -> bytes:
        cmd = job.cmd
        return self.deriver.nonce(
            tenant_id=cmd.tenant_id, request_id=cmd.request_id,
            channel=self.settings.channel or route.channel,
            chaincode=self.settings.chaincode or route.chaincode,
            function=route.function, args=args, generation=job.generation)

    async def choose_tx(self, job: Job, route: Route, args: Sequence[str]) -> Chosen | None:
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
        if fingerprint is None or fingerprint in self._creators_looked_up or self.ring.holds(fingerprint):
            return False
        # One lookup for all the rows that name it at once; the first to get the answer learns from it.
        creator = await self._looking_up.run(
            fingerprint, lambda: self.db.call(lambda st: st.find_creator(fingerprint)))
        if fingerprint in self._creators_looked_up:
            return self.ring.holds(fingerprint)
        self._creators_looked_up.add(fingerprint)
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

    async def resolve_duplicate(self, job: Job, channel: str, route: Route, args: Sequence[str], tx_id: str,
                                signer: SigningIdentity) -> Chosen | None:
        """The endorser says the ledger already holds ``tx_id``: VALID is this command's effect
        (COMMITTED with that block); definitely INVALID moves to the next generation, returned to be
        endorsed at once; anything else puts the row back (None)."""
        job.may_be_on_ledger = True
        job.stage = Stage.COMMIT_WAIT
        try:
            result = await self.gateway.commit_status(signer, channel=channel, tx_id=tx_id,
                                                      timeout=self.settings.resolve_timeout)
        except FabricError as err:
            self.health.note(err)
            await self.outcomes.retry(job, Action("retry", err.error_code, counts=False, on_ledger=True,
                                                  reason="in_doubt"),
                                      f"duplicate tx {tx_id} unresolved: {err}")
            return None
        self.health.up()
        if result.valid:
            await self.outcomes.committed(job, result)
            return None
        if classify_validation_code(result.code) in (ErrorClass.DUPLICATE, ErrorClass.TRANSIENT):
            await self.outcomes.retry(job, Action("retry", result.code_name, counts=False, on_ledger=True,
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
            await self.outcomes.retry(job, _rotation_unresolved,
                                      f"tx {old_tx_id} (previous certificate) unresolved: {err}{until}")
            return None
        if result.valid:
            await self.outcomes.committed(job, result)
            return None
        cls = classify_validation_code(result.code)
        if cls in (ErrorClass.DUPLICATE, ErrorClass.TRANSIENT):
            await self.outcomes.retry(job, _rotation_unresolved,
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

    async def resolve_before_fail(self, job: Job, err: FabricError, signer: SigningIdentity, channel: str,
                                  tx_id: str) -> None:
        """A permanent error on a row whose tx id may be on the ledger: only a definite ledger answer
        may fail it (a VALID first copy means it is committed)."""
        if err.error_class is ErrorClass.DUPLICATE:
            await self._wait_commit(job, signer, channel, tx_id, None)
            return
        if err.stage == "submit" and not job.cmd.submitted_before:
            # The gateway refused the only copy there has ever been (this try's, written SUBMITTED just
            # before): the ledger cannot hold it, so there is nothing to resolve.
            await self.outcomes.fail(job, err.error_code, str(err), tx_id=tx_id)
            return
        # An earlier try's copy may be on the ledger. While the gateway answers, each such try counts,
        # so a copy it refuses every time ends within max_attempts (FAILED, tx id kept: see Outcomes.retry).
        try:
            result = await self.gateway.commit_status(signer, channel=channel, tx_id=tx_id,
                                                      timeout=self.settings.resolve_timeout)
        except FabricError as err2:
            # Not noted for the breaker: a deadline is the expected answer for a tx id the ledger lacks.
            infra = err2.error_code in INFRA_ERROR_CODES or err2.stage == "connect"
            await self.outcomes.retry(job, Action("retry", err.error_code, counts=not infra, on_ledger=True,
                                                  reason="in_doubt", refused=True),
                                      f"{err} (earlier copy {tx_id} unresolved: {err2.error_code})")
            return
        if result.valid:
            await self.outcomes.committed(job, result)
        elif classify_validation_code(result.code) in (ErrorClass.DUPLICATE, ErrorClass.TRANSIENT):
            await self.outcomes.retry(job, Action("retry", err.error_code, counts=False, on_ledger=True,
                                                  reason="in_doubt"), str(err))
        else:
            await self.outcomes.fail(job, err.error_code, f"{err} (earlier copy {tx_id}: {result.code_name})",
                                     tx_id=tx_id)
