"""What a try of a row ends in, written to the row: COMMITTED (batched), FAILED, or PENDING again.

Every path of the pipeline (:mod:`gxsubmit.pipeline`, :mod:`gxsubmit.resolve`) ends here, so the
limits that bound a row's tries are applied in one place: ``max_attempts`` (counted attempts only),
the in-doubt limit, and "never FAILED without a definite answer while a copy may be on the ledger".
The counts and the last error feed the worker's status file.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from gxsubmit.dblink import Batcher, DbLink
from gxsubmit.decisions import Action, commit_action, in_doubt_expired
from gxsubmit.fabric import CommitResult
from gxsubmit.job import Job, LeaseLost, PipelineSettings, Stage
from gxsubmit.metrics import WorkerMetrics
from gxsubmit.outbox import Committed

__all__ = ["Outcomes"]

#: The pipeline's logger: these lines were always the pipeline's, and log filters name it.
log = logging.getLogger("gxsubmit.pipeline")

#: Wake a little after a put-back row's next_attempt_at (the database clock decides "due").
_RETRY_WAKE_SLACK_S = 0.05


class Outcomes:
    """Writes a job's outcome to its row (fenced by the lease: a lost lease raises ``LeaseLost``)."""

    def __init__(
        self,
        *,
        settings: PipelineSettings,
        db: DbLink,
        metrics: WorkerMetrics,
        backoff: Callable[[int], float],
        backoff_cap: float,
        committed: Batcher[tuple[Committed, str]],  # (row, command_type): the batch counts commits
        on_finishing: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        #: told when a job has its outcome and only writes it: its in-flight slot is free from then on
        self._on_finishing = on_finishing
        self.db = db
        self.metrics = metrics
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self._committed = committed
        #: monotonic times at which rows this worker put back with retry_later become due (a heap)
        self.retry_due: list[float] = []
        self.n_committed = 0
        self.n_failed = 0
        self.last_error: str | None = None
        self._info = log.isEnabledFor(logging.INFO)

    def _finishing(self, job: Job) -> None:
        job.stage = Stage.FINISHING
        if self._on_finishing is not None:
            self._on_finishing()

    def next_retry_in(self, now: float, claimed_at: float) -> float | None:
        """Seconds until the earliest put-back row is due; forgets those a claim at ``claimed_at``
        (monotonic) already saw as due. None when nothing is pending."""
        due = self.retry_due
        while due and due[0] <= claimed_at:
            heapq.heappop(due)
        if not due:
            return None
        return max(0.0, due[0] - now) + _RETRY_WAKE_SLACK_S

    async def on_commit(self, job: Job, result: CommitResult) -> None:
        """The ledger's answer for the job's tx id: committed, a retry, or FAILED with its validation code."""
        action = commit_action(result.code, result.code_name, job.cmd.counted_attempts)
        if action.kind == "commit":
            await self.committed(job, result)
        elif action.kind == "retry":
            await self.retry(job, action, f"transaction {result.tx_id} {result.code_name} in block "
                                          f"{result.block_number}",
                             delay=self.settings.conflict_delay * (2 ** min(job.cmd.attempts, 6))
                             if action.burn_nonce else None)
        else:
            await self.fail(job, action.error_code,
                            f"transaction {result.tx_id} invalid: {result.code_name} in block "
                            f"{result.block_number}", tx_id=result.tx_id, validation_code=result.code_name)

    async def committed(self, job: Job, result: CommitResult) -> None:
        """The tx id is VALID on the ledger: COMMITTED with its block (batched with others)."""
        self._finishing(job)
        cmd = job.cmd
        # The committed counter is incremented by the batch write itself (the worker's committed batcher).
        ok = await self._committed.put((Committed(cmd.id, cmd.lease_token, result.tx_id, result.block_number,
                                                  result.code_name), cmd.command_type))
        if not ok:
            raise LeaseLost
        self.n_committed += 1
        self.metrics.latency.observe(max(0.0, (datetime.now(UTC) - cmd.created_at).total_seconds()))
        if self._info:
            log.info("Command committed", extra={
                "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": result.tx_id,
                "block": result.block_number, "attempt": cmd.attempts})

    async def retry(self, job: Job, action: Action, error: str, *, delay: float | None = None) -> None:
        """Back to PENDING for a later try (same or next nonce generation), unless a limit ends the row:
        FAILED then, but never without a definite answer while a copy may be on the ledger."""
        cmd = job.cmd
        self._finishing(job)
        self.last_error = f"{action.error_code}: {error}"[:500]
        on_ledger = action.on_ledger or job.may_be_on_ledger
        # Counted attempts only: the claims of retries that do not count are given back (migration 0006).
        exhausted = action.counts and cmd.counted_attempts >= self.settings.max_attempts
        if exhausted and not on_ledger:
            tries = f" ({cmd.attempts} tries in all)" if cmd.attempts != cmd.counted_attempts else ""
            await self.fail(job, "RETRIES_EXHAUSTED", f"after {cmd.counted_attempts} attempts{tries}: "
                                                      f"{action.error_code}: {error}", tx_id=job.tx_id)
            return
        if exhausted and action.refused:
            # Bounded even though an earlier copy may be on the ledger: the row keeps its tx id (and
            # nonce), so a requeue re-endorses that same tx id and finds a committed copy instead of
            # adding one (with derived tx ids, the same generation re-derives it).
            await self.fail(job, action.error_code, f"{error}; after {cmd.counted_attempts} attempts, "
                            f"transaction {job.tx_id} is unresolved: an earlier copy may be on the ledger, "
                            "a requeue resolves it before sending again", tx_id=job.tx_id)
            return
        if in_doubt_expired(action, cmd.submitted_at, datetime.now(UTC), self.settings.in_doubt_limit):
            await self.fail(job, "IN_DOUBT_UNRESOLVED",
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
            raise LeaseLost
        # The claim loop wakes at this row's next_attempt_at (NOTIFY only covers new rows).
        heapq.heappush(self.retry_due, time.monotonic() + delay)
        self.metrics.retried(action.reason or "transient")
        log.warning("Command failed, will retry", extra={
            "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": job.tx_id,
            "error_code": action.error_code, "attempt": cmd.attempts, "retry_in_s": round(delay, 3),
            "new_nonce": action.burn_nonce, "generation": job.generation, "error": error})

    async def fail_early(self, job: Job, error_code: str, error: str) -> None:
        """Fail a row before this try sent anything; say so when an earlier try's copy may be on the
        ledger (its tx id stays in the row, so a requeue resolves it first)."""
        cmd = job.cmd
        if cmd.submitted_before and cmd.fabric_tx_id:
            error += (f"; transaction {cmd.fabric_tx_id} of an earlier try may be on the ledger: a requeue "
                      "resolves it before sending again")
        await self.fail(job, error_code, error)

    async def fail(self, job: Job, error_code: str, error: str, *, tx_id: str | None = None,
                   validation_code: str | None = None) -> None:
        """FAILED for good (until a requeue), with the tx id when there is one."""
        cmd = job.cmd
        self._finishing(job)
        tx_id = tx_id or job.tx_id
        ok = await self.db.call(lambda st: st.mark_failed(
            cmd.id, cmd.lease_token, error_code=error_code, error=error, tx_id=tx_id,
            validation_code=validation_code))
        if not ok:
            raise LeaseLost
        self.n_failed += 1
        self.last_error = f"{error_code}: {error}"[:500]
        self.metrics.failed(cmd.command_type, error_code)
        log.error("Command failed", extra={
            "command_id": str(cmd.id), "command_type": cmd.command_type, "tx_id": tx_id,
            "error_code": error_code, "attempt": cmd.attempts, "error": error})

