"""TxValidationCode names and what each means for a retry (docs/design.md#fabric-gateway-client)."""

from __future__ import annotations

from fabric_protos.peer import transaction_pb2

from gxsubmit.fabric.errors import ErrorClass

__all__ = [
    "BOUNDED_RETRY_CODES",
    "DUPLICATE_TXID",
    "ENDORSEMENT_POLICY_FAILURE",
    "MVCC_READ_CONFLICT",
    "NOT_VALIDATED",
    "PHANTOM_READ_CONFLICT",
    "VALID",
    "classify_validation_code",
    "code_name",
]

VALID = 0
DUPLICATE_TXID = 9
ENDORSEMENT_POLICY_FAILURE = 10
MVCC_READ_CONFLICT = 11
PHANTOM_READ_CONFLICT = 12
EXPIRED_CHAINCODE = 17
CHAINCODE_VERSION_CONFLICT = 18
NOT_VALIDATED = 254

#: Codes that a new proposal *may* fix when a concurrent definition/policy change is plausible; they are
#: classified PERMANENT, and a caller that wants the fabric-samples behaviour retries them a bounded number
#: of times with a new nonce.
BOUNDED_RETRY_CODES = frozenset({ENDORSEMENT_POLICY_FAILURE})

_CONFLICT = frozenset(
    {MVCC_READ_CONFLICT, PHANTOM_READ_CONFLICT, EXPIRED_CHAINCODE, CHAINCODE_VERSION_CONFLICT}
)


def code_name(code: int) -> str:
    """``TxValidationCode`` name, or ``UNKNOWN_<n>`` for a value this protobuf release does not know."""
    try:
        return str(transaction_pb2.TxValidationCode.Name(code))
    except ValueError:
        return f"UNKNOWN_{code}"


def classify_validation_code(code: int) -> ErrorClass | None:
    """None for VALID; CONFLICT = re-endorse with a new nonce; DUPLICATE = the first copy decides;
    TRANSIENT = not validated yet (re-poll); everything else PERMANENT."""
    if code == VALID:
        return None
    if code in _CONFLICT:
        return ErrorClass.CONFLICT
    if code == DUPLICATE_TXID:
        return ErrorClass.DUPLICATE
    if code == NOT_VALIDATED:
        return ErrorClass.TRANSIENT
    return ErrorClass.PERMANENT
