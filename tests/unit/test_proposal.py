"""Deterministic proposal building, signatures, and the prepared-envelope check."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2, proposal_response_pb2, transaction_pb2

from gxsubmit.fabric.codes import classify_validation_code, code_name
from gxsubmit.fabric.errors import ErrorClass
from gxsubmit.fabric.identity import P256_ORDER, SigningIdentity
from gxsubmit.fabric.proposal import (
    PreparedMismatch,
    Proposal,
    build_proposal,
    chaincode_events_request,
    commit_status_request,
    compute_tx_id,
    new_nonce,
    parse_prepared,
    sign_envelope,
)
from gxsubmit.wallet import load_identity

TS = datetime(2026, 11, 27, 12, 30, 45, 123000, tzinfo=UTC)
NONCE = bytes(range(24))


def _ident(wallet: Path, *, deterministic: bool = True) -> SigningIdentity:
    wi = load_identity(wallet, "org1-admin", msp_id="Org1MSP", expected_role="gx_admin")
    return SigningIdentity.from_wallet(wi, deterministic=deterministic)


def _build(ident: SigningIdentity, nonce: bytes = NONCE, **kw: Any) -> Proposal:
    args: dict[str, Any] = {
        "channel": "gxchannel",
        "chaincode": "gxtv3",
        "function": "TokenomicsContract:TransferWithFees",
        "args": ["a", "b", "10", "fee", b"\x00raw", "memo"],
        "nonce": nonce,
        "timestamp": TS,
    }
    args.update(kw)
    return build_proposal(ident, **args)


def test_tx_id_is_sha256_of_nonce_and_creator(wallet: Path) -> None:
    ident = _ident(wallet)
    p = _build(ident)
    assert p.tx_id == hashlib.sha256(NONCE + ident.creator).hexdigest() == compute_tx_id(NONCE, ident.creator)
    sid = identities_pb2.SerializedIdentity.FromString(ident.creator)
    assert sid.mspid == "Org1MSP" and sid.id_bytes == (wallet / "org1-admin-cert").read_bytes()


def test_stored_nonce_reproduces_the_same_proposal(wallet: Path) -> None:
    ident = _ident(wallet)
    a, b = _build(ident), _build(ident)
    assert a.tx_id == b.tx_id
    assert a.signed_proposal.SerializeToString() == b.signed_proposal.SerializeToString()
    # random signing: same tx id and proposal bytes, different (valid) signature
    r = _build(_ident(wallet, deterministic=False))
    assert r.tx_id == a.tx_id and r.signed_proposal.proposal_bytes == a.signed_proposal.proposal_bytes
    # a later retry with the stored nonce but a fresh clock keeps the tx id
    later = _build(ident, timestamp=datetime.now(UTC))
    assert later.tx_id == a.tx_id and later.signed_proposal.proposal_bytes != a.signed_proposal.proposal_bytes
    assert _build(ident, nonce=new_nonce()).tx_id != a.tx_id
    assert len(new_nonce()) == 24 and new_nonce() != new_nonce()


def test_layout_matches_reference(wallet: Path) -> None:
    ident = _ident(wallet)
    p = _build(ident, transient={"b": "2", "a": b"1"}, endorsing_orgs=["Org1MSP", "Org2MSP"])
    prop = proposal_pb2.Proposal.FromString(p.signed_proposal.proposal_bytes)
    hdr = common_pb2.Header.FromString(prop.header)
    ch = common_pb2.ChannelHeader.FromString(hdr.channel_header)
    assert ch.type == common_pb2.ENDORSER_TRANSACTION and ch.epoch == 0 and ch.version == 0
    assert ch.channel_id == "gxchannel" and ch.tx_id == p.tx_id
    assert (ch.timestamp.seconds, ch.timestamp.nanos) == (int(TS.timestamp()), 123_000_000)
    ext = proposal_pb2.ChaincodeHeaderExtension.FromString(ch.extension)
    assert ext.chaincode_id.name == "gxtv3"
    sh = common_pb2.SignatureHeader.FromString(hdr.signature_header)
    assert sh.nonce == NONCE and sh.creator == ident.creator
    cpp = proposal_pb2.ChaincodeProposalPayload.FromString(prop.payload)
    assert dict(cpp.TransientMap) == {"a": b"1", "b": b"2"}
    spec = chaincode_pb2.ChaincodeInvocationSpec.FromString(cpp.input).chaincode_spec
    assert spec.type == chaincode_pb2.ChaincodeSpec.NODE and spec.chaincode_id.name == "gxtv3"
    assert list(spec.input.args) == [
        b"TokenomicsContract:TransferWithFees",
        b"a",
        b"b",
        b"10",
        b"fee",
        b"\x00raw",
        b"memo",
    ]
    assert p.endorsing_orgs == ("Org1MSP", "Org2MSP")
    assert p.channel_header == hdr.channel_header and p.signature_header == hdr.signature_header


def test_signature_verifies_and_is_low_s(wallet: Path) -> None:
    ident = _ident(wallet, deterministic=False)
    wi = load_identity(wallet, "org1-admin", msp_id="Org1MSP", expected_role="gx_admin")
    pub = wi.private_key.public_key()
    for i in range(64):  # random k: about half the raw signatures would be high-S
        data = f"message {i}".encode()
        sig = ident.sign(data)
        _, s = decode_dss_signature(sig)
        assert s <= P256_ORDER // 2
        pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        pub.verify(ident.sign(b"x"), b"y", ec.ECDSA(hashes.SHA256()))


def test_commit_status_and_events_requests_are_signed(wallet: Path) -> None:
    ident = _ident(wallet)
    wi = load_identity(wallet, "org1-admin", msp_id="Org1MSP", expected_role="gx_admin")
    csr = commit_status_request(ident, channel="gxchannel", tx_id="ab" * 32)
    inner = gateway_pb2.CommitStatusRequest.FromString(csr.request)
    assert inner.identity == ident.creator and inner.transaction_id == "ab" * 32
    wi.private_key.public_key().verify(csr.signature, csr.request, ec.ECDSA(hashes.SHA256()))
    ev = chaincode_events_request(
        ident, channel="gxchannel", chaincode="gxtv3", start_block=3, after_tx_id="t1"
    )
    req = gateway_pb2.ChaincodeEventsRequest.FromString(ev.request)
    assert req.start_position.WhichOneof("Type") == "specified" and req.start_position.specified.number == 3
    assert req.after_transaction_id == "t1"
    ev2 = chaincode_events_request(ident, channel="gxchannel", chaincode="gxtv3")
    pos = gateway_pb2.ChaincodeEventsRequest.FromString(ev2.request).start_position
    assert pos.WhichOneof("Type") == "next_commit"
    with pytest.raises(ValueError):
        chaincode_events_request(ident, channel="c", chaincode="cc", start_block=-1)


def _envelope_for(
    p: Proposal, result: bytes, *, channel_header: bytes | None = None, signature_header: bytes | None = None
) -> common_pb2.Envelope:
    hdr = common_pb2.Header(
        channel_header=channel_header or p.channel_header,
        signature_header=signature_header or p.signature_header,
    )
    action = proposal_pb2.ChaincodeAction(response={"status": 200, "payload": result})
    prp = proposal_response_pb2.ProposalResponsePayload(extension=action.SerializeToString())
    cap = transaction_pb2.ChaincodeActionPayload(
        action={"proposal_response_payload": prp.SerializeToString()}
    )
    tx = transaction_pb2.Transaction(
        actions=[{"header": hdr.signature_header, "payload": cap.SerializeToString()}]
    )
    return common_pb2.Envelope(
        payload=common_pb2.Payload(header=hdr, data=tx.SerializeToString()).SerializeToString()
    )


def test_prepared_envelope_must_be_ours(wallet: Path) -> None:
    ident = _ident(wallet)
    p = _build(ident)
    prepared = parse_prepared(_envelope_for(p, b"ok"), expected=p)
    assert (prepared.tx_id, prepared.channel, prepared.result) == (p.tx_id, "gxchannel", b"ok")
    signed = sign_envelope(ident, prepared.envelope)
    assert signed.payload == prepared.envelope.payload and not prepared.envelope.signature
    other = _build(ident, nonce=b"\x01" * 24)
    with pytest.raises(PreparedMismatch, match="channel header"):
        parse_prepared(_envelope_for(p, b"ok", channel_header=other.channel_header), expected=p)
    with pytest.raises(PreparedMismatch, match="signature header"):
        parse_prepared(_envelope_for(p, b"ok", signature_header=other.signature_header), expected=p)
    with pytest.raises(PreparedMismatch, match="does not parse"):
        parse_prepared(common_pb2.Envelope(payload=b"\xff\xff\xff"), expected=p)


@pytest.mark.parametrize(
    ("code", "name", "cls"),
    [
        (0, "VALID", None),
        (11, "MVCC_READ_CONFLICT", ErrorClass.CONFLICT),
        (12, "PHANTOM_READ_CONFLICT", ErrorClass.CONFLICT),
        (9, "DUPLICATE_TXID", ErrorClass.DUPLICATE),
        (10, "ENDORSEMENT_POLICY_FAILURE", ErrorClass.PERMANENT),
        (8, "BAD_PROPOSAL_TXID", ErrorClass.PERMANENT),
        (4, "BAD_CREATOR_SIGNATURE", ErrorClass.PERMANENT),
        (254, "NOT_VALIDATED", ErrorClass.TRANSIENT),
        (255, "INVALID_OTHER_REASON", ErrorClass.PERMANENT),
        (77, "UNKNOWN_77", ErrorClass.PERMANENT),
    ],
)
def test_validation_codes(code: int, name: str, cls: ErrorClass | None) -> None:
    assert code_name(code) == name
    assert classify_validation_code(code) is cls


def test_every_validation_code_has_a_name_and_class() -> None:
    for value in transaction_pb2.TxValidationCode.values():
        assert code_name(value) == transaction_pb2.TxValidationCode.Name(value)
        assert (classify_validation_code(value) is None) == (value == 0)
