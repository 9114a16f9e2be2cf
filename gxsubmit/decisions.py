"""The pipeline's pure decisions: what a Fabric answer means for the row, without I/O.

Unit-tested on their own; :mod:`gxsubmit.pipeline`, :mod:`gxsubmit.resolve` and
:mod:`gxsubmit.outcomes` act on what they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gxsubmit.fabric import ErrorClass, FabricError, SigningIdentity, classify_validation_code, compute_tx_id
from gxsubmit.fabric.codes import BOUNDED_RETRY_CODES

__all__ = [
    "EXPIRED_CREATOR_GRACE",
    "INFRA_ERROR_CODES",
    "Action",
    "commit_action",
    "creator_long_expired",
    "error_action",
    "in_doubt_expired",
    "reproducing_signer",
]

#: Error codes that say "the gateway is not there", not "this command is in trouble": they feed the
#: breaker and never count towards ``max_attempts``.
INFRA_ERROR_CODES = frozenset({"GATEWAY_UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED", "BREAKER_OPEN"})

#: How many times a bounded-retry commit code (ENDORSEMENT_POLICY_FAILURE) gets a new nonce.
_BOUNDED_RETRIES = 3
#: How long after its creator certificate expired a tx id that the ledger does not know is taken as
#: lost for good. Orderers refuse an envelope whose creator has expired (docs/design.md#rotated-certificates),
#: and one accepted just before is in a block within the batch timeout; the hour also covers
#: orderer clocks that run behind ours and a peer that is still catching up on those blocks.
EXPIRED_CREATOR_GRACE = timedelta(hours=1)


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
