"""The values the store takes and returns: claimed rows, outcomes to record, queue statistics."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

STATUSES = ("PENDING", "CLAIMED", "SUBMITTED", "COMMITTED", "FAILED")
ERROR_MAX_BYTES = 2000
ERROR_CODE_MAX_BYTES = 64


def truncate_error(text: str, max_bytes: int = ERROR_MAX_BYTES) -> str:
    """Make ``text`` storable: at most ``max_bytes`` of UTF-8, never cut inside a character.

    PostgreSQL text cannot hold NUL or lone surrogates, so those are replaced rather than failing the
    very update that records an error.
    """
    text = text.replace("\x00", "\ufffd")
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    marker = "…".encode()
    cut = data[: max(0, max_bytes - len(marker))]
    return cut.decode("utf-8", "ignore") + marker.decode()


@dataclass(frozen=True, slots=True)
class ClaimedCommand:
    """A row leased to this worker. ``attempts`` (every claim) and ``counted_attempts`` (the claims that
    count against max_attempts, migration 0006) already count this claim."""

    id: uuid.UUID
    seq: int
    tenant_id: str
    service: str
    command_type: str
    request_id: str
    payload: Any
    attempts: int
    counted_attempts: int
    lease_token: uuid.UUID
    tx_nonce: bytes | None
    fabric_tx_id: str | None
    creator_fingerprint: str | None
    #: expiry of the certificate the stored tx id was signed under (NULL on rows from before 0004)
    creator_not_after: datetime | None
    submitted_before: bool
    created_at: datetime
    #: earlier claims of this row that ended in its worker crashing (migration 0009)
    crashed_claims: int = 0
    #: the generation the nonce is derived at: how many of the row's tx ids were found INVALID (0008)
    tx_generation: int = 0
    #: when the row's current tx id was first handed to the orderer (None: never): bounds "in doubt"
    submitted_at: datetime | None = None



@dataclass(frozen=True, slots=True)
class Committed:
    """A commit outcome to record (VALID, or another code the worker chose to record as COMMITTED)."""

    id: uuid.UUID
    token: uuid.UUID
    tx_id: str | None
    block: int | None
    validation_code: str


@dataclass(frozen=True, slots=True)
class TxRecord:
    """One row's nonce + tx id to store before its first Endorse (see ``record_tx_many``)."""

    id: uuid.UUID
    token: uuid.UUID
    nonce: bytes
    tx_id: str
    creator_fingerprint: str
    #: the certificate's expiry: once it is well past, a lost tx id can be abandoned
    #: (docs/design.md#rotated-certificates)
    creator_not_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class SubmittedTx:
    """The write-ahead of one Submit (``mark_submitted_tx``): what the envelope about to leave carries."""

    id: uuid.UUID
    token: uuid.UUID
    tx_id: str
    generation: int
    creator_fingerprint: str
    creator_not_after: datetime | None = None
    #: a stored nonce the row keeps (from before 0008); None for a derived one, which is not stored
    nonce: bytes | None = None



@dataclass(frozen=True, slots=True)
class QueueStats:
    by_status: dict[str, int] = field(default_factory=dict)
    by_status_type: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_pending_age_s: float | None = None
    failed_by_code: dict[str, int] = field(default_factory=dict)
    #: unfinished rows whose last try failed, by that error code
    retrying_by_code: dict[str, int] = field(default_factory=dict)
    #: by_status["COMMITTED"] is the planner's estimate and by_status_type has no COMMITTED entries
    #: (a table of at least ``EXACT_COMMITTED_BELOW`` rows; see ``OutboxStore.stats``)
    committed_estimated: bool = False

