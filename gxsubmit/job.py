"""A claimed command inside the worker: how far it got, its tx id, and what its pipeline runs under.

Shared by the pipeline's parts (:mod:`gxsubmit.pipeline`, :mod:`gxsubmit.resolve`,
:mod:`gxsubmit.outcomes`) and the worker's claim loop, so none of them imports another for its types.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from dataclasses import dataclass, field

from gxsubmit.outbox import ClaimedCommand

__all__ = ["Job", "LeaseLost", "PipelineSettings", "Stage"]


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




class LeaseLost(Exception):
    """The lease was lost (another worker took the row over): stop touching it."""
