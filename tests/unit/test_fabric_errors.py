"""The error taxonomy: one mapping from (stage, gRPC code, gateway text) to what the worker does next."""

from __future__ import annotations

import grpc
import pytest
from fabric_protos.gateway import gateway_pb2
from google.protobuf import any_pb2  # type: ignore[import-untyped]  # as in gxsubmit: no stubs
from google.rpc import status_pb2

from gxsubmit.fabric.errors import ErrorClass, ErrorDetail, FabricError, classify, from_rpc_error

T, C, P, D, IN = (
    ErrorClass.TRANSIENT,
    ErrorClass.CONFLICT,
    ErrorClass.PERMANENT,
    ErrorClass.DUPLICATE,
    ErrorClass.IN_DOUBT,
)
ENDORSE_ABORT = "failed to endorse transaction, see attached details for more info"


def peers(answer: str) -> str:
    """An endorse failure as the gateway words it: its message, then the peers' answers."""
    return f"{ENDORSE_ABORT} | {answer}"


#: Texts too long for a row of the table.
DUPLICATE = peers("rpc error: code = Unknown desc = duplicate transaction found [abc]. Creator [0a07]")
NO_ROLE = peers("chaincode response 500, access denied: caller does not have gxc_role gx_super_admin")
ROLE_403 = peers("chaincode response 403, Unauthorized: role gx_admin required")
CHANNEL_DENIED = peers("access denied: channel [gxchannel] creator org unknown")
NO_CHAINCODE = peers("make sure the chaincode x has been successfully defined on channel c and try again: "
                     "chaincode x not found")
FORBIDDEN = "received unsuccessful response from orderer: status=FORBIDDEN"
NO_ORDERER = "no orderers could successfully process transaction"
MISMATCH = "failed to collect enough transaction endorsements | ProposalResponsePayloads do not match"
EVALUATE_500 = "evaluate call to endorser returned error: chaincode response 500, boom"

#: (stage, gRPC code, gateway text, class, error code): one row per case.
TABLE = [
    ("evaluate", "UNAVAILABLE", "", T, "GATEWAY_UNAVAILABLE"),
    ("evaluate", "DEADLINE_EXCEEDED", "evaluate timeout expired", T, "DEADLINE_EXCEEDED"),
    ("evaluate", "ABORTED", "failed to evaluate transaction | peer unreachable", T, "EVALUATE_ABORTED"),
    ("evaluate", "UNKNOWN", EVALUATE_500, P, "CHAINCODE_ERROR"),
    ("evaluate", "FAILED_PRECONDITION", "no suitable peers", P, "PRECONDITION_FAILED"),
    ("evaluate", "INVALID_ARGUMENT", "failed to unpack transaction proposal", P, "BAD_REQUEST"),
    ("evaluate", "PERMISSION_DENIED", "", P, "ACCESS_DENIED"),
    ("endorse", "UNAVAILABLE", "", T, "GATEWAY_UNAVAILABLE"),
    ("endorse", "DEADLINE_EXCEEDED", "", T, "DEADLINE_EXCEEDED"),
    ("endorse", "ABORTED", DUPLICATE, D, "DUPLICATE_TXID"),
    ("endorse", "ABORTED", peers("chaincode response 500, insufficient balance"), P, "CHAINCODE_ERROR"),
    ("endorse", "ABORTED", NO_ROLE, P, "ROLE_DENIED"),
    ("endorse", "ABORTED", ROLE_403, P, "ROLE_DENIED"),
    ("endorse", "ABORTED", CHANNEL_DENIED, P, "ACCESS_DENIED"),
    ("endorse", "ABORTED", MISMATCH, C, "ENDORSEMENT_MISMATCH"),
    ("endorse", "ABORTED", peers("request unauthorized due to incorrect timestamp"), T, "CLOCK_SKEW"),
    ("endorse", "ABORTED", peers("failed to connect to peer0"), T, "ENDORSE_ABORTED"),
    ("endorse", "FAILED_PRECONDITION", "specify endorsing organizations", P, "PRECONDITION_FAILED"),
    ("endorse", "INVALID_ARGUMENT", "", P, "BAD_REQUEST"),
    ("endorse", "ABORTED", peers("channel 'nochannel' not found"), P, "NOT_FOUND"),
    ("endorse", "ABORTED", NO_CHAINCODE, P, "NOT_FOUND"),
    ("submit", "UNAVAILABLE", NO_ORDERER, IN, "GATEWAY_UNAVAILABLE"),
    ("submit", "DEADLINE_EXCEEDED", "", IN, "DEADLINE_EXCEEDED"),
    ("submit", "CANCELLED", "", IN, "CANCELLED"),
    ("submit", "UNKNOWN", "", IN, "SUBMIT_UNKNOWN"),
    ("submit", "ABORTED", FORBIDDEN, P, "ORDERER_REJECTED"),
    ("submit", "INVALID_ARGUMENT", "prepared transaction must be signed", P, "BAD_REQUEST"),
    ("commit_status", "DEADLINE_EXCEEDED", "", IN, "DEADLINE_EXCEEDED"),
    ("commit_status", "UNAVAILABLE", "", IN, "GATEWAY_UNAVAILABLE"),
    ("commit_status", "ABORTED", "ledger error", IN, "COMMIT_STATUS_ABORTED"),
    ("commit_status", "PERMISSION_DENIED", "", P, "ACCESS_DENIED"),
    ("events", "UNAVAILABLE", "", T, "GATEWAY_UNAVAILABLE"),
    ("events", "INVALID_ARGUMENT", "newest is not supported", P, "BAD_REQUEST"),
]


@pytest.mark.parametrize(("stage", "code", "text", "cls", "error_code"), TABLE)
def test_classification_table(stage: str, code: str, text: str, cls: ErrorClass, error_code: str) -> None:
    assert classify(stage, code, text) == (cls, error_code)


def test_str_always_carries_the_details() -> None:
    err = FabricError(
        stage="endorse",
        error_class=ErrorClass.PERMANENT,
        error_code="CHAINCODE_ERROR",
        grpc_code="ABORTED",
        message=ENDORSE_ABORT,
        details=(
            ErrorDetail("peer0.org1:7051", "Org1MSP", "chaincode response 500, insufficient balance"),
            ErrorDetail("peer0.org2:9051", "Org2MSP", "chaincode response 500, insufficient balance"),
        ),
        tx_id="t1",
    )
    text = str(err)
    assert text.startswith("endorse ABORTED: failed to endorse transaction")
    assert (
        "[details: peer0.org1:7051 (Org1MSP): chaincode response 500, insufficient balance; peer0.org2:9051"
        in text
    )
    assert "CHAINCODE_ERROR" in repr(err) and "t1" in repr(err)


class _FakeCallError(grpc.RpcError):  # type: ignore[misc]  # grpc has no stubs: RpcError is Any
    """The shape of a failed call as grpc hands it over (code, details, trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, object], ...]) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, object], ...]:
        return self._trailing


def _status_bin(code: grpc.StatusCode, message: str, details: list[gateway_pb2.ErrorDetail]) -> bytes:
    anys = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        anys.append(a)
    data: bytes = status_pb2.Status(code=code.value[0], message=message, details=anys).SerializeToString()
    return data


@pytest.mark.parametrize(("call_text", "trailer_text", "peer_message", "cls", "error_code"), [
    (ENDORSE_ABORT, ENDORSE_ABORT, "duplicate transaction found [t1]. Creator [0a]", D, "DUPLICATE_TXID"),
    # grpc_status.from_call refuses a trailer whose message disagrees: the peers' messages are still shown
    ("other text", "x", "chaincode response 500, no", P, "CHAINCODE_ERROR"),
])
def test_details_decoded_from_status_trailer(
    call_text: str, trailer_text: str, peer_message: str, cls: ErrorClass, error_code: str
) -> None:
    detail = gateway_pb2.ErrorDetail(address="peer0:7051", msp_id="Org1MSP", message=peer_message)
    trailer = _status_bin(grpc.StatusCode.ABORTED, trailer_text, [detail])
    err = _FakeCallError(grpc.StatusCode.ABORTED, call_text, (("grpc-status-details-bin", trailer),))
    fe = from_rpc_error("endorse", err, tx_id="t1")
    assert fe.details == (ErrorDetail("peer0:7051", "Org1MSP", peer_message),)
    assert (fe.error_class, fe.error_code, fe.grpc_code, fe.tx_id) == (cls, error_code, "ABORTED", "t1")
    assert f"peer0:7051 (Org1MSP): {peer_message}" in str(fe)


def test_no_trailer_no_details() -> None:
    fe = from_rpc_error("submit", _FakeCallError(grpc.StatusCode.UNAVAILABLE, "connection refused", ()))
    assert fe.details == () and fe.error_class is ErrorClass.IN_DOUBT
    assert str(fe) == "submit UNAVAILABLE: connection refused"
