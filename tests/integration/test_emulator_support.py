"""Helpers for the emulator tests: a raw Gateway client built from fabric_protos + cryptography only.

Deliberately independent of gxsubmit.fabric so that the emulator is checked against a second
implementation of the client side (the other being the official Node client). No tests here.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2
from google.protobuf import timestamp_pb2  # type: ignore[import-untyped]  # as in gxsubmit: no stubs
from grpc_status import rpc_status

N_P256 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
IDENTITIES = ("org1-super-admin", "org1-admin", "org1-partner-api")


@dataclass
class RawIdentity:
    mspid: str
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def from_wallet(cls, wallet: Path, name: str, mspid: str = "Org1MSP") -> RawIdentity:
        key = serialization.load_pem_private_key((wallet / f"{name}-key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(mspid, (wallet / f"{name}-cert").read_bytes(), key)

    @classmethod
    def from_pems(cls, cert_pem: bytes, key_pem: bytes, mspid: str = "Org1MSP") -> RawIdentity:
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(mspid, cert_pem, key)

    @property
    def creator(self) -> bytes:
        identity = identities_pb2.SerializedIdentity(mspid=self.mspid, id_bytes=self.cert_pem)
        return bytes(identity.SerializeToString())

    def sign(self, data: bytes, *, high_s: bool = False) -> bytes:
        r, s = utils.decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA256())))
        low = min(s, N_P256 - s)
        return utils.encode_dss_signature(r, N_P256 - low if high_s else low)


@dataclass
class Proposal:
    tx_id: str
    signed: proposal_pb2.SignedProposal
    header: common_pb2.Header


def build_proposal(
    ident: RawIdentity,
    function: str,
    args: Sequence[str] = (),
    *,
    channel: str = "gxchannel",
    chaincode: str = "gxtv3",
    nonce: bytes | None = None,
    tx_id: str | None = None,
    transient: dict[str, bytes] | None = None,
    signer: RawIdentity | None = None,
    high_s: bool = False,
    sign: bool = True,
) -> Proposal:
    nonce = nonce if nonce is not None else os.urandom(24)
    real_tx_id = hashlib.sha256(nonce + ident.creator).hexdigest()
    now = time.time()
    chdr = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION,
        channel_id=channel,
        tx_id=tx_id if tx_id is not None else real_tx_id,
        timestamp=timestamp_pb2.Timestamp(seconds=int(now), nanos=int((now % 1) * 1e9)),
        extension=proposal_pb2.ChaincodeHeaderExtension(
            chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode)
        ).SerializeToString(),
    )
    shdr = common_pb2.SignatureHeader(creator=ident.creator, nonce=nonce)
    header = common_pb2.Header(
        channel_header=chdr.SerializeToString(), signature_header=shdr.SerializeToString()
    )
    spec = chaincode_pb2.ChaincodeInvocationSpec(
        chaincode_spec=chaincode_pb2.ChaincodeSpec(
            type=chaincode_pb2.ChaincodeSpec.NODE,
            chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode),
            input=chaincode_pb2.ChaincodeInput(args=[function.encode(), *(a.encode() for a in args)]),
        )
    )
    cpp = proposal_pb2.ChaincodeProposalPayload(input=spec.SerializeToString(), TransientMap=transient or {})
    prop = proposal_pb2.Proposal(
        header=header.SerializeToString(), payload=cpp.SerializeToString(deterministic=True)
    ).SerializeToString()
    sig = (signer or ident).sign(prop, high_s=high_s) if sign else b""
    return Proposal(chdr.tx_id, proposal_pb2.SignedProposal(proposal_bytes=prop, signature=sig), header)


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    details: list[gateway_pb2.ErrorDetail]

    def detail_text(self) -> str:
        return " | ".join(d.message for d in self.details)


def _call(fn: Any, request: Any, timeout: float) -> Any:
    try:
        return fn(request, timeout=timeout)
    except grpc.RpcError as err:
        st = rpc_status.from_call(err)
        details: list[gateway_pb2.ErrorDetail] = []
        if st is not None:
            for any_ in st.details:
                d = gateway_pb2.ErrorDetail()
                assert any_.Unpack(d), f"non-ErrorDetail in status details: {any_.type_url}"
                details.append(d)
        return Failure(err.code(), err.details() or "", details)


class RawGateway:
    """Synchronous raw client (its own grpc core, no event loop involved)."""

    def __init__(self, port: int, *, tls_ca: bytes | None = None) -> None:
        target = f"127.0.0.1:{port}"
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=tls_ca)
            self.channel = grpc.secure_channel(
                target, creds, options=[("grpc.ssl_target_name_override", "localhost")]
            )
        else:
            self.channel = grpc.insecure_channel(target)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def evaluate(self, p: Proposal, timeout: float = 5.0) -> Any:
        req = gateway_pb2.EvaluateRequest(
            transaction_id=p.tx_id, channel_id="gxchannel", proposed_transaction=p.signed
        )
        return _call(self.stub.Evaluate, req, timeout)

    def endorse(
        self, p: Proposal, *, orgs: Sequence[str] = ("Org1MSP", "Org2MSP"), timeout: float = 15.0
    ) -> Any:
        req = gateway_pb2.EndorseRequest(
            transaction_id=p.tx_id,
            channel_id="gxchannel",
            proposed_transaction=p.signed,
            endorsing_organizations=list(orgs),
        )
        res = _call(self.stub.Endorse, req, timeout)
        return res if isinstance(res, Failure) else res.prepared_transaction

    def submit(self, tx_id: str, env: common_pb2.Envelope, timeout: float = 5.0) -> Any:
        req = gateway_pb2.SubmitRequest(
            transaction_id=tx_id, channel_id="gxchannel", prepared_transaction=env
        )
        return _call(self.stub.Submit, req, timeout)

    def commit_status(
        self, ident: RawIdentity, tx_id: str, timeout: float = 10.0, *, signer: RawIdentity | None = None
    ) -> Any:
        req = gateway_pb2.CommitStatusRequest(
            transaction_id=tx_id, channel_id="gxchannel", identity=ident.creator
        )
        raw = req.SerializeToString()
        signed = gateway_pb2.SignedCommitStatusRequest(request=raw, signature=(signer or ident).sign(raw))
        return _call(self.stub.CommitStatus, signed, timeout)

    def events(
        self,
        ident: RawIdentity,
        *,
        start: int | None = None,
        after_tx: str | None = None,
        newest: bool = False,
    ) -> Iterator[gateway_pb2.ChaincodeEventsResponse]:
        req = gateway_pb2.ChaincodeEventsRequest(
            channel_id="gxchannel", chaincode_id="gxtv3", identity=ident.creator
        )
        if newest:
            req.start_position.newest.SetInParent()
        elif start is not None:
            req.start_position.specified.number = start
        else:
            req.start_position.next_commit.SetInParent()
        if after_tx:
            req.after_transaction_id = after_tx
        raw = req.SerializeToString()
        call = self.stub.ChaincodeEvents(
            gateway_pb2.SignedChaincodeEventsRequest(request=raw, signature=ident.sign(raw)), timeout=20
        )
        return call  # type: ignore[no-any-return]  # grpc has no stubs

    def run(self, ident: RawIdentity, function: str, args: Sequence[str] = (), **kw: Any) -> tuple[str, Any]:
        """Endorse + sign + submit + commit status; returns (tx_id, CommitStatusResponse | Failure)."""
        p = build_proposal(ident, function, args, **kw)
        env = self.endorse(p)
        if isinstance(env, Failure):
            return p.tx_id, env
        env.signature = ident.sign(env.payload)
        sub = self.submit(p.tx_id, env)
        if isinstance(sub, Failure):
            return p.tx_id, sub
        return p.tx_id, self.commit_status(ident, p.tx_id)


def signed(env: common_pb2.Envelope, ident: RawIdentity) -> common_pb2.Envelope:
    out = common_pb2.Envelope()
    out.CopyFrom(env)
    out.signature = ident.sign(env.payload)
    return out


def expired_cert_pems(wallet: Path) -> tuple[bytes, bytes]:
    """(certificate, key) PEMs of a partner-api identity from the wallet's CA that expired yesterday."""
    from gxsubmit.devwallet import issue_identity, load_ca

    now = datetime.now(UTC)
    cert, key = issue_identity(
        load_ca(wallet),
        "old",
        "gx_partner_api",
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    return cert, key
