"""Decoding the peer's answers (Endorse, CommitStatus, DeliverFiltered) from their wire bytes.

Why a module of its own: these are the functions a broken or hostile gateway feeds with whatever it
likes, so they are pure (bytes in, value or :class:`FabricError` out) and fuzzed as such
(tests/unit/test_hostile_answers.py). The client hands them the raw bytes instead of letting grpcio
deserialize, so an undecodable answer is one of our mapped errors, not a grpcio internal.
"""

from __future__ import annotations

from dataclasses import dataclass

from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.peer import events_pb2

from gxsubmit.fabric.codes import code_name
from gxsubmit.fabric.errors import ErrorClass, FabricError
from gxsubmit.fabric.proposal import Prepared, PreparedMismatch, Proposal, parse_prepared

__all__ = [
    "MAX_BLOCK_NUMBER",
    "CommitResult",
    "FilteredBlock",
    "deliver_status",
    "parse_commit_status",
    "parse_deliver",
    "parse_endorse",
    "parse_evaluate",
]

#: The highest block number believed (PostgreSQL's bigint holds it; a real chain never gets there).
MAX_BLOCK_NUMBER = 2**63 - 1


@dataclass(frozen=True)
class CommitResult:
    tx_id: str
    block_number: int
    code: int
    code_name: str

    @property
    def valid(self) -> bool:
        return self.code == 0


@dataclass(frozen=True, slots=True)
class FilteredBlock:
    """One committed block as the peer's filtered delivery shows it: every transaction's validation
    code, in block order (a second copy of a tx id shows DUPLICATE_TXID here)."""

    number: int
    transactions: tuple[tuple[str, int], ...]


def _garbled(stage: str, what: str, exc: Exception, *, tx_id: str | None, error_class: ErrorClass,
             code: str = "BAD_RESPONSE") -> FabricError:
    # The exception text names the message type, never the bytes (they may be megabytes of anything).
    message = f"the gateway's {what} answer does not parse ({type(exc).__name__})"
    return FabricError(stage=stage, error_class=error_class, error_code=code, message=message, tx_id=tx_id)


def _unusable(p: Proposal, message: str, *, code: str = "BAD_RESPONSE") -> FabricError:
    # Nothing was signed or submitted: the same proposal can be endorsed again. TRANSIENT, so a broken
    # gateway costs counted attempts (bounded by max_attempts), never a signature on something else.
    return FabricError(
        stage="endorse", error_class=ErrorClass.TRANSIENT, error_code=code, message=message, tx_id=p.tx_id
    )


def parse_endorse(data: bytes, p: Proposal) -> Prepared:
    """The prepared transaction of an Endorse answer, checked to be the transaction ``p`` proposed."""
    try:
        resp = gateway_pb2.EndorseResponse.FromString(data)
    except Exception as exc:  # DecodeError, or anything a hostile message provokes in the decoder
        raise _garbled("endorse", "Endorse", exc, tx_id=p.tx_id, error_class=ErrorClass.TRANSIENT) from None
    if not resp.HasField("prepared_transaction"):
        raise _unusable(p, "gateway returned no prepared transaction")
    try:
        return parse_prepared(resp.prepared_transaction, expected=p)
    except PreparedMismatch as exc:
        raise _unusable(p, str(exc)[:500], code="PREPARED_MISMATCH") from None


def parse_evaluate(data: bytes, tx_id: str) -> bytes:
    """The chaincode's result in an Evaluate answer (nothing was ordered: a bad answer is TRANSIENT)."""
    try:
        resp = gateway_pb2.EvaluateResponse.FromString(data)
    except Exception as exc:
        raise _garbled("evaluate", "Evaluate", exc, tx_id=tx_id, error_class=ErrorClass.TRANSIENT) from None
    return bytes(resp.result.payload)


def parse_commit_status(data: bytes, tx_id: str) -> CommitResult:
    """A CommitStatus answer about ``tx_id`` (the answer itself names no tx id: the request did).

    A committed transaction of ours is in block 1 or later (block 0 holds the channel's configuration
    only), and an empty answer decodes as VALID in block 0 (proto3 defaults): refused, so a truncated
    answer can never commit a row. Any refusal is IN_DOUBT: the caller asks again."""
    try:
        resp = gateway_pb2.CommitStatusResponse.FromString(data)
    except Exception as exc:
        raise _garbled("commit_status", "CommitStatus", exc, tx_id=tx_id,
                       error_class=ErrorClass.IN_DOUBT) from None
    block = int(resp.block_number)
    if not 1 <= block <= MAX_BLOCK_NUMBER:
        raise FabricError(stage="commit_status", error_class=ErrorClass.IN_DOUBT,
                          error_code="BAD_RESPONSE", tx_id=tx_id,
                          message=f"the gateway's CommitStatus answer names block {block}")
    code = int(resp.result)
    return CommitResult(tx_id=tx_id, block_number=block, code=code, code_name=code_name(code))


def parse_deliver(data: bytes, channel: str) -> FilteredBlock | None:
    """One DeliverFiltered message: a block, None for a kind not asked for, or the stream's end (raised).
    An answer that does not parse ends the stream too (TRANSIENT: the watcher reconnects)."""
    try:
        resp = events_pb2.DeliverResponse.FromString(data)
    except Exception as exc:
        raise _garbled("deliver", f"block stream ({channel})", exc, tx_id=None,
                       error_class=ErrorClass.TRANSIENT, code="DELIVER_BAD_RESPONSE") from None
    kind = resp.WhichOneof("Type")
    if kind == "filtered_block":
        fb = resp.filtered_block
        number = int(fb.number)
        if number > MAX_BLOCK_NUMBER:
            raise FabricError(stage="deliver", error_class=ErrorClass.TRANSIENT,
                              error_code="DELIVER_BAD_RESPONSE",
                              message=f"block stream on {channel} sent block number {number}")
        return FilteredBlock(
            number=number,
            transactions=tuple((t.txid, int(t.tx_validation_code)) for t in fb.filtered_transactions),
        )
    if kind == "status":
        raise deliver_status(channel, int(resp.status))
    return None  # other kinds (full blocks) are not asked for: ignore them


def deliver_status(channel: str, status: int) -> FabricError:
    """A deliver stream answered with a status instead of blocks (common.Status). 503 and 500 are the
    peer being busy or behind; the 4xx ones are about this request or identity (bad seek, not a channel
    member, unknown channel): retrying the same request will not help, but the worker falls back to
    CommitStatus calls and keeps working either way."""
    name = common_pb2.Status.Name(status) if status in common_pb2.Status.values() else str(status)
    transient = status in (
        common_pb2.SUCCESS,
        common_pb2.SERVICE_UNAVAILABLE,
        common_pb2.INTERNAL_SERVER_ERROR,
    )
    return FabricError(
        stage="deliver",
        error_class=ErrorClass.TRANSIENT if transient else ErrorClass.PERMANENT,
        error_code=f"DELIVER_{name}",
        message=f"block stream on {channel} answered {name} ({status})",
    )
