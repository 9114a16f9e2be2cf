"""A worker's claim loop and its jobs in flight: what to claim, when, and how many at once.

Claims only the command types routed to this worker's identity, as many as there are free in-flight
slots (``max_in_flight``, at most ``batch_size`` per statement), woken by NOTIFY (:mod:`gxsubmit.wakeups`)
with a slow jittered poll as fallback, and when a put-back row comes due; paused while the database is
down or the gateway's breaker is open. Each claimed row runs as its own task through the pipeline. A
row whose earlier claim ended in a worker crash runs alone (migration 0009).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time

from gxsubmit.backoff import Backoff
from gxsubmit.breaker import BreakerState
from gxsubmit.dblink import DbUnavailable
from gxsubmit.gatewayprobe import probe_idle_gateway
from gxsubmit.job import Job, Stage
from gxsubmit.outbox import ClaimedCommand
from gxsubmit.pipeline import Pipeline
from gxsubmit.workerparts import WorkerParts

__all__ = ["Claimer", "free_slots"]

#: The worker's logger: these lines were always the worker's, and log filters name it.
log = logging.getLogger("gxsubmit.worker")

_MIN_CLAIM_GAP_S = 0.005  # coalesce NOTIFY bursts into one claim
_SLOT_WAIT_S = 0.02  # with a backlog, wait this long for more free slots before a small claim
_TAKEOVER_SLACK_S = 0.05  # claim this long after a foreign lease runs out (the clocks of worker and server)
_TAKEOVER_MIN_WAIT_S = 0.25
#: Idle with the gateway shown down: probe it this often (the breaker bounds a real outage).
_GATEWAY_RECHECK_S = 2.0
#: A claim only counts as having seen a put-back row when it ran this long after the row's due time.
_RETRY_CLOCK_SKEW_S = 0.05
#: How often a busy worker asks whether rows that crashed a worker wait to be run alone (migration 0009).
_SUSPECT_CHECK_S = 5.0


def free_slots(cap: int, jobs: int, finishing: int) -> int:
    """In-flight slots free for new claims, of ``cap``, with ``jobs`` in memory of which ``finishing``
    only write their outcome. Those hold no slot: the next claim overlaps that write instead of
    waiting a round trip for it. Jobs in memory stay under twice the limit, so outcome writes that
    cannot land stop the claims."""
    return min(cap - (jobs - finishing), 2 * cap - jobs)


class Claimer:
    """Claims rows and runs each through the pipeline until the worker's stop event is set."""

    def __init__(self, parts: WorkerParts, pipeline: Pipeline) -> None:
        self.parts = parts
        self.cfg = parts.cfg
        self.pipeline = pipeline
        self.db = parts.db.link
        self.breaker = parts.breaker
        self.metrics = parts.metrics
        self.jobs = parts.jobs
        self.stop = parts.stop
        self._wake = parts.wake
        self._types = parts.boot.types
        self._loop = asyncio.get_running_loop()
        #: a row whose earlier claim ended in a crash runs alone: this is it while it is in flight
        self._suspect: Job | None = None
        self._suspects_due = True  # asked at start, then every _SUSPECT_CHECK_S and after each suspect
        self._suspect_check_at = 0.0

    async def _wait_wake(self, timeout: float) -> None:  # noqa: ASYNC109 - bounded wait on an event
        if self.stop.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    def _free_slots(self, cap: int) -> int:
        finishing = sum(1 for j in self.jobs.values() if j.stage is Stage.FINISHING)
        return free_slots(cap, len(self.jobs), finishing)

    def _poll_timeout(self) -> float:
        return self.parts.wakeups.poll_interval * random.uniform(0.8, 1.2)

    async def run(self) -> None:
        """The claim loop; returns once the stop event is set (the worker then drains)."""
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
                    lambda st, n=limit: st.claim(self._types, n, cfg.lease_seconds,  # type: ignore[misc]
                                                 max_payload_bytes=cfg.max_payload_bytes))
            except DbUnavailable:
                continue
            except Exception as exc:
                self.parts.status.last_error = f"claim failed: {type(exc).__name__}: {exc}"
                log.error("Claim failed; retrying", extra={"error": self.parts.status.last_error})
                await claim_fail.sleep(self.stop)
                continue
            claim_fail.reset()
            for cmd in rows:
                self._start(cmd)
            if not rows and not self.parts.health.ok:  # half-open, or a failure below the threshold
                await self._probe_idle_gateway()
            backlog = len(rows) >= limit
            if not backlog:
                timeout = self._poll_timeout()
                due = self.pipeline.outcomes.next_retry_in(time.monotonic(), claimed_mono)
                if due is not None:
                    timeout = min(timeout, due)
                if not rows:
                    takeover = await self._next_takeover()
                    if takeover is not None:
                        timeout = min(timeout, takeover)
                    if not self.parts.health.ok:  # idle and shown unready: ask the gateway again soon
                        timeout = min(timeout, _GATEWAY_RECHECK_S)
                await self._wait_wake(timeout)

    async def _next_takeover(self) -> float | None:
        """Idle: when another holder's lease on a row of ours runs out (its holder died, hung or was cut
        off), claim then, not at the next poll or NOTIFY (none comes for an expired lease)."""
        try:
            left = await self.db.once(lambda st: st.next_takeover(self._types))
        except Exception:  # the next claim reports database trouble
            return None
        # an expired lease another claim holds this instant: look again soon, not in a tight loop
        return None if left is None else max(left + _TAKEOVER_SLACK_S, _TAKEOVER_MIN_WAIT_S)

    async def _probe_idle_gateway(self) -> None:
        """Nothing to send and the gateway shown down: probe with a read so a healed link closes the
        breaker and /readyz turns back."""
        parts = self.parts
        channels = parts.channels
        if not channels:
            return
        outcome = await probe_idle_gateway(parts.gateway, parts.ring.current, channels[0], self.breaker)
        if outcome is not False:
            parts.health.note_probe(None if outcome is True else outcome)
            parts.status.write()

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
                self._suspects_due = await self.db.once(lambda st: st.suspects_due(self._types))
            except Exception:  # the claim right after reports database trouble
                return False
        if not self._suspects_due:
            return False
        if self.jobs:
            await self._wait_wake(1.0)  # let the work in flight finish first
            return True
        try:
            rows = await self.db.once(lambda st: st.claim_suspect(
                self._types, self.cfg.lease_seconds, max_payload_bytes=self.cfg.max_payload_bytes))
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
