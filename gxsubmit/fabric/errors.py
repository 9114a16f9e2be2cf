"""The one place where gRPC failures become the gxsubmit error taxonomy.

The taxonomy: docs/design.md#fabric-gateway-client.

Callers above this boundary see only :class:`FabricError`: a stage, a class that says what to do next,
a short stable ``error_code`` stored in the outbox row, and every ``ErrorDetail`` the gateway attached.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from fabric_protos.gateway import gateway_pb2
from google.rpc import status_pb2
from grpc_status import rpc_status

__all__ = [
    "ErrorClass",
    "ErrorDetail",
    "FabricError",
    "classify",
    "decode_details",
    "from_rpc_error",
    "rich_status",
]

_DETAILS_KEY = "grpc-status-details-bin"


class ErrorClass(enum.Enum):
    TRANSIENT = "transient"  # retry later with the same tx id / same signed proposal
    CONFLICT = "conflict"  # re-endorse with a new nonce (new tx id)
    PERMANENT = "permanent"  # FAILED at once: chaincode rejected, role denied, bad argument
    DUPLICATE = "duplicate"  # the tx id is already on the ledger: ask CommitStatus for the first copy
    IN_DOUBT = "in_doubt"  # the envelope may have reached the orderer: resolve by tx id, never re-endorse


@dataclass(frozen=True)
class ErrorDetail:
    address: str
    msp_id: str
    message: str

    def __str__(self) -> str:
        where = self.address or "?"
        return f"{where} ({self.msp_id}): {self.message}" if self.msp_id else f"{where}: {self.message}"


class FabricError(Exception):
    """A classified Fabric Gateway failure. ``str()`` always includes the attached details."""

    def __init__(
        self,
        *,
        stage: str,
        error_class: ErrorClass,
        error_code: str,
        message: str,
        grpc_code: str | None = None,
        details: Sequence[ErrorDetail] = (),
        tx_id: str | None = None,
    ) -> None:
        self.stage = stage
        self.error_class = error_class
        self.error_code = error_code
        self.message = message
        self.grpc_code = grpc_code
        self.details = tuple(details)
        self.tx_id = tx_id
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.stage} {self.grpc_code or self.error_code}: {self.message or '(no message)'}"
        if self.details:
            text += " [details: " + "; ".join(str(d) for d in self.details) + "]"
        return text

    def __str__(self) -> str:
        return self._render()

    def __repr__(self) -> str:
        return (
            f"FabricError(stage={self.stage!r}, class={self.error_class.name}, code={self.error_code!r}, "
            f"grpc={self.grpc_code!r}, tx_id={self.tx_id!r}, message={self._render()!r})"
        )


def decode_details(status: status_pb2.Status | None) -> tuple[ErrorDetail, ...]:
    """Every detail of a rich status decoded as ``gateway.ErrorDetail`` (as the Node client does: it does
    not check type URLs); an undecodable entry is kept as its type URL rather than dropped."""
    if status is None:
        return ()
    out: list[ErrorDetail] = []
    for anyd in status.details:
        d = gateway_pb2.ErrorDetail()
        try:
            d.ParseFromString(anyd.value)
        except Exception:
            out.append(ErrorDetail(address="", msp_id="", message=f"<undecodable {anyd.type_url}>"))
            continue
        out.append(ErrorDetail(address=d.address, msp_id=d.msp_id, message=d.message))
    return tuple(out)


def rich_status(err: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` of a failed call (``grpc-status-details-bin``), or None."""
    try:
        return rpc_status.from_call(err)
    except Exception:  # code/message mismatch or a malformed trailer: parse the trailer ourselves
        pass
    md = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in _pairs(md):
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:
                return None
    return None


_ROLE = re.compile(
    r"gxc_role|\brole\b|access denied|not authori[sz]ed|unauthori[sz]ed|permission|forbidden", re.I
)
_CHAINCODE = re.compile(r"chaincode response|chaincode (?:returned|error)|error in simulation", re.I)
_PEER_ACCESS = re.compile(
    r"access denied|creator org unknown|signature|certificate|identity expired|invalid identity", re.I
)
_MISMATCH = re.compile(r"ProposalResponsePayloads do not match", re.I)
_DUPLICATE = re.compile(r"duplicate transaction found", re.I)
_TIMESTAMP = re.compile(r"incorrect timestamp|timewindow|time window", re.I)
_EXPIRED = re.compile(r"identity expired|certificate has expired", re.I)
_BAD_REQ = re.compile(
    r"incorrectly computed txid|failed to unpack|invalid (?:header|proposal)|malformed", re.I
)

_NOT_FOUND = re.compile(
    r"channel '[^']*' not found|chaincode \S+ not found|successfully defined on channel", re.I
)

_TRANSPORT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"}

#: grpcio's words for a message over its cap ("Sent/Received message larger than max (N vs. M)"): the
#: message was not delivered, and the same message never will be. Not an outage: RESOURCE_EXHAUSTED
#: otherwise feeds the breaker and is retried without counting.
_TOO_LARGE = re.compile(r"message larger than max|REQUEST_ENTITY_TOO_LARGE", re.I)


def _transport_code(code: str) -> str:
    return {
        "UNAVAILABLE": "GATEWAY_UNAVAILABLE",
        "DEADLINE_EXCEEDED": "DEADLINE_EXCEEDED",
        "CANCELLED": "CANCELLED",
        "RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED",
    }[code]


def _permanent_code(code: str) -> tuple[ErrorClass, str] | None:
    return {
        "INVALID_ARGUMENT": (ErrorClass.PERMANENT, "BAD_REQUEST"),
        "PERMISSION_DENIED": (ErrorClass.PERMANENT, "ACCESS_DENIED"),
        "UNAUTHENTICATED": (ErrorClass.PERMANENT, "ACCESS_DENIED"),
        "NOT_FOUND": (ErrorClass.PERMANENT, "NOT_FOUND"),
        "UNIMPLEMENTED": (ErrorClass.PERMANENT, "UNIMPLEMENTED"),
        "OUT_OF_RANGE": (ErrorClass.PERMANENT, "BAD_REQUEST"),
    }.get(code)


def _endorser_text(text: str) -> tuple[ErrorClass, str] | None:
    """Classify by what the endorsing peers said (message plus details)."""
    if _DUPLICATE.search(text):
        return ErrorClass.DUPLICATE, "DUPLICATE_TXID"
    if _CHAINCODE.search(text):
        return (
            (ErrorClass.PERMANENT, "ROLE_DENIED")
            if _ROLE.search(text)
            else (ErrorClass.PERMANENT, "CHAINCODE_ERROR")
        )
    if _MISMATCH.search(text):
        return ErrorClass.CONFLICT, "ENDORSEMENT_MISMATCH"
    if _TIMESTAMP.search(text):
        return ErrorClass.TRANSIENT, "CLOCK_SKEW"  # a new proposal (same nonce) carries a fresh timestamp
    if _EXPIRED.search(text):
        return ErrorClass.PERMANENT, "IDENTITY_EXPIRED"
    if _PEER_ACCESS.search(text):
        return ErrorClass.PERMANENT, "ACCESS_DENIED"
    if _BAD_REQ.search(text):
        return ErrorClass.PERMANENT, "BAD_REQUEST"
    if _NOT_FOUND.search(text):
        return ErrorClass.PERMANENT, "NOT_FOUND"  # unknown channel or chaincode: configuration
    return None


def classify(stage: str, code: str, text: str) -> tuple[ErrorClass, str]:
    """(class, error_code) for a gRPC status ``code`` name at ``stage`` with message+details ``text``."""
    if stage in ("endorse", "evaluate", "submit") and (
            (code == "RESOURCE_EXHAUSTED" and _TOO_LARGE.search(text))
            or (stage == "submit" and code == "ABORTED" and _TOO_LARGE.search(text))):
        # Our message was too large for a gRPC hop or the orderer (its BatchSize.AbsoluteMaxBytes).
        return ErrorClass.PERMANENT, "PAYLOAD_TOO_LARGE"
    if code == "RESOURCE_EXHAUSTED" and _TOO_LARGE.search(text):
        return ErrorClass.IN_DOUBT if stage == "commit_status" else ErrorClass.TRANSIENT, "MESSAGE_TOO_LARGE"
    if stage in ("submit", "commit_status"):
        # After the envelope may have left, a transport failure cannot tell us whether it was ordered.
        if code in _TRANSPORT or code in ("UNKNOWN", "INTERNAL", "DATA_LOSS"):
            return ErrorClass.IN_DOUBT, _transport_code(
                code
            ) if code in _TRANSPORT else f"{stage.upper()}_{code}"
        if stage == "submit" and code == "ABORTED":
            return ErrorClass.PERMANENT, "ORDERER_REJECTED"  # orderer 4xx: forbidden, bad request, too large
        if stage == "commit_status" and code == "ABORTED":
            return ErrorClass.IN_DOUBT, "COMMIT_STATUS_ABORTED"  # ledger error: re-poll
        if code == "FAILED_PRECONDITION":
            return ErrorClass.PERMANENT, "PRECONDITION_FAILED"
        return _permanent_code(code) or (ErrorClass.PERMANENT, f"{stage.upper()}_{code}")

    if code in _TRANSPORT:
        return ErrorClass.TRANSIENT, _transport_code(code)
    if code == "FAILED_PRECONDITION":
        found = _endorser_text(text)
        if found is not None and found[0] is not ErrorClass.TRANSIENT:
            return found
        return ErrorClass.PERMANENT, "PRECONDITION_FAILED"
    if code in ("ABORTED", "UNKNOWN"):
        found = _endorser_text(text)
        if found is not None:
            return found
        # Endorsers unreachable / pre-processing failures on remote peers: nothing reached the ledger.
        return ErrorClass.TRANSIENT, f"{stage.upper()}_{code}"
    if code in ("INTERNAL", "DATA_LOSS"):
        return ErrorClass.TRANSIENT, f"{stage.upper()}_{code}"
    return _permanent_code(code) or (ErrorClass.PERMANENT, f"{stage.upper()}_{code}")


#: Bounds on what a peer's error text may cost us: it goes into log lines, the row's error column and
#: /readyz. A real gateway's message is a line; its details are one per endorsing peer.
MAX_MESSAGE_CHARS = 2000
MAX_DETAILS = 10
MAX_DETAIL_CHARS = 400


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 30] + f"...[{len(text) - limit + 30} more chars]"


def from_rpc_error(stage: str, err: grpc.RpcError, *, tx_id: str | None = None) -> FabricError:
    """Map a grpc (sync or aio) error at ``stage`` into a FabricError, decoding the ErrorDetails (the
    first ``MAX_DETAILS``; texts clipped: a peer's error can be megabytes)."""
    code_obj = err.code() if hasattr(err, "code") else None
    code = code_obj.name if isinstance(code_obj, grpc.StatusCode) else "UNKNOWN"
    message = _clip((err.details() if hasattr(err, "details") else None) or "", MAX_MESSAGE_CHARS)
    all_details = decode_details(rich_status(err))
    details = tuple(
        ErrorDetail(address=_clip(d.address, 200), msp_id=_clip(d.msp_id, 100),
                    message=_clip(d.message, MAX_DETAIL_CHARS))
        for d in all_details[:MAX_DETAILS]
    )
    if len(all_details) > MAX_DETAILS:
        details += (ErrorDetail(address="", msp_id="", message=f"... {len(all_details) - MAX_DETAILS} more"),)
    text = " | ".join([message, *(d.message for d in details)])
    error_class, error_code = classify(stage, code, text)
    return FabricError(
        stage=stage,
        error_class=error_class,
        error_code=error_code,
        message=message,
        grpc_code=code,
        details=details,
        tx_id=tx_id,
    )


def _pairs(md: object) -> list[tuple[str, str | bytes]]:
    if md is None:
        return []
    out: list[tuple[str, str | bytes]] = []
    try:
        for item in md:  # type: ignore[attr-defined]
            key, value = item
            out.append((str(key), value))
    except (TypeError, ValueError):
        return []
    return out
