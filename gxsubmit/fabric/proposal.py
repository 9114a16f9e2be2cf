"""Deterministic builders for every message the client sends, and the parser of prepared envelopes.

Everything here is pure (no I/O) so that the bytes can be compared with the official Node client and
so that a stored nonce reproduces the same transaction id and proposal.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.orderer import ab_pb2
from fabric_protos.peer import chaincode_pb2, proposal_pb2, proposal_response_pb2, transaction_pb2

from gxsubmit.fabric.identity import SigningIdentity

__all__ = [
    "NONCE_SIZE",
    "Prepared",
    "PreparedMismatch",
    "Proposal",
    "build_proposal",
    "chaincode_events_request",
    "commit_status_request",
    "compute_tx_id",
    "endorse_request",
    "evaluate_request",
    "new_nonce",
    "parse_prepared",
    "proposed_transaction",
    "seek_envelope",
    "sign_envelope",
    "submit_request",
]

NONCE_SIZE = 24


def _ser(msg: object) -> bytes:
    # Deterministic serialisation sorts map keys (the transient map), matching the Node client.
    return msg.SerializeToString(deterministic=True)  # type: ignore[attr-defined, no-any-return]


def new_nonce() -> bytes:
    """24 random bytes, the size Fabric itself uses."""
    return os.urandom(NONCE_SIZE)


def compute_tx_id(nonce: bytes, creator: bytes) -> str:
    """Lowercase hex SHA-256(nonce ‖ creator): the peer recomputes and checks it."""
    return hashlib.sha256(nonce + creator).hexdigest()


@dataclass(frozen=True)
class Proposal:
    """A signed proposal plus the pieces needed to check and follow it."""

    tx_id: str
    nonce: bytes
    channel: str
    chaincode: str
    signed_proposal: proposal_pb2.SignedProposal = field(repr=False)
    endorsing_orgs: tuple[str, ...] = ()
    channel_header: bytes = field(default=b"", repr=False)
    signature_header: bytes = field(default=b"", repr=False)
    has_transient: bool = False


def _seconds_nanos(ts: datetime) -> tuple[int, int]:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86400 + delta.seconds, delta.microseconds * 1000


@functools.lru_cache(maxsize=64)
def _header_extension(chaincode: str) -> bytes:
    """The serialised ChaincodeHeaderExtension: the same bytes for every proposal to a chaincode."""
    return _ser(proposal_pb2.ChaincodeHeaderExtension(chaincode_id=chaincode_pb2.ChaincodeID(name=chaincode)))


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def build_proposal(
    identity: SigningIdentity,
    *,
    channel: str,
    chaincode: str,
    function: str,
    args: Sequence[str | bytes],
    nonce: bytes,
    timestamp: datetime | None = None,
    transient: Mapping[str, str | bytes] | None = None,
    endorsing_orgs: Sequence[str] = (),
) -> Proposal:
    """Build and sign a chaincode proposal exactly as the official client lays it out.

    Why: docs/design.md#fabric-gateway-client.

    Deterministic given ``nonce`` and ``timestamp`` (and deterministic signing).
    """
    if len(nonce) == 0:
        raise ValueError("nonce must not be empty")
    creator = identity.creator
    tx_id = compute_tx_id(nonce, creator)
    cc_id = chaincode_pb2.ChaincodeID(name=chaincode)
    ch = common_pb2.ChannelHeader(
        type=common_pb2.ENDORSER_TRANSACTION,
        channel_id=channel,
        tx_id=tx_id,
        extension=_header_extension(chaincode),
    )
    ch.timestamp.seconds, ch.timestamp.nanos = _seconds_nanos(timestamp or datetime.now(UTC))
    channel_header = _ser(ch)
    signature_header = _ser(common_pb2.SignatureHeader(creator=creator, nonce=nonce))
    spec = chaincode_pb2.ChaincodeSpec(
        type=chaincode_pb2.ChaincodeSpec.NODE,
        chaincode_id=cc_id,
        input=chaincode_pb2.ChaincodeInput(args=[_as_bytes(function), *(_as_bytes(a) for a in args)]),
    )
    cpp = proposal_pb2.ChaincodeProposalPayload(
        input=_ser(chaincode_pb2.ChaincodeInvocationSpec(chaincode_spec=spec))
    )
    for key, value in (transient or {}).items():
        cpp.TransientMap[key] = _as_bytes(value)
    header = _ser(common_pb2.Header(channel_header=channel_header, signature_header=signature_header))
    proposal_bytes = _ser(proposal_pb2.Proposal(header=header, payload=_ser(cpp)))
    signed = proposal_pb2.SignedProposal(
        proposal_bytes=proposal_bytes, signature=identity.sign(proposal_bytes)
    )
    return Proposal(
        tx_id=tx_id,
        nonce=bytes(nonce),
        channel=channel,
        chaincode=chaincode,
        signed_proposal=signed,
        endorsing_orgs=tuple(endorsing_orgs),
        channel_header=channel_header,
        signature_header=signature_header,
        has_transient=bool(transient),
    )


def proposed_transaction(p: Proposal) -> gateway_pb2.ProposedTransaction:
    """The offline-signing wrapper the Node client's ``Proposal.getBytes()`` returns."""
    return gateway_pb2.ProposedTransaction(
        transaction_id=p.tx_id, proposal=p.signed_proposal, endorsing_organizations=list(p.endorsing_orgs)
    )


def evaluate_request(p: Proposal) -> gateway_pb2.EvaluateRequest:
    return gateway_pb2.EvaluateRequest(
        transaction_id=p.tx_id,
        channel_id=p.channel,
        proposed_transaction=p.signed_proposal,
        target_organizations=list(p.endorsing_orgs),
    )


def endorse_request(p: Proposal) -> gateway_pb2.EndorseRequest:
    return gateway_pb2.EndorseRequest(
        transaction_id=p.tx_id,
        channel_id=p.channel,
        proposed_transaction=p.signed_proposal,
        endorsing_organizations=list(p.endorsing_orgs),
    )


@dataclass(frozen=True)
class Prepared:
    """An endorsed, not yet signed transaction envelope and the chaincode's result."""

    tx_id: str
    channel: str
    envelope: common_pb2.Envelope = field(repr=False)
    result: bytes = field(default=b"", repr=False)


class PreparedMismatch(ValueError):
    """The gateway's prepared envelope is not the transaction we proposed (or does not parse)."""


def parse_prepared(envelope: common_pb2.Envelope, expected: Proposal | None = None) -> Prepared:
    """Read channel, tx id and result from a prepared envelope.

    With ``expected``, check that the envelope's header carries exactly our channel header and signature
    header bytes, so we never sign something other than what we proposed
    (docs/design.md#fabric-gateway-client).
    """
    try:
        payload = common_pb2.Payload.FromString(envelope.payload)
        ch = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    except Exception as exc:  # protobuf DecodeError
        raise PreparedMismatch(f"prepared envelope does not parse: {exc}") from None
    if expected is not None:
        if payload.header.channel_header != expected.channel_header:
            raise PreparedMismatch(
                f"prepared envelope channel header differs from the proposal (tx {ch.tx_id!r}, "
                f"expected {expected.tx_id})"
            )
        if payload.header.signature_header != expected.signature_header:
            raise PreparedMismatch(
                "prepared envelope signature header (creator/nonce) differs from the proposal"
            )
    return Prepared(tx_id=ch.tx_id, channel=ch.channel_id, envelope=envelope, result=_result_of(payload))


def _result_of(payload: common_pb2.Payload) -> bytes:
    """Result of the first action whose ChaincodeAction response parses (as the Node client does)."""
    try:
        tx = transaction_pb2.Transaction.FromString(payload.data)
    except Exception:
        return b""
    for action in tx.actions:
        try:
            cap = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
            prp = proposal_response_pb2.ProposalResponsePayload.FromString(
                cap.action.proposal_response_payload
            )
            cca = proposal_pb2.ChaincodeAction.FromString(prp.extension)
        except Exception:
            continue
        if cca.HasField("response"):
            return bytes(cca.response.payload)
    return b""


def sign_envelope(identity: SigningIdentity, envelope: common_pb2.Envelope) -> common_pb2.Envelope:
    """A copy of ``envelope`` signed over SHA-256(payload)."""
    return common_pb2.Envelope(payload=envelope.payload, signature=identity.sign(envelope.payload))


def submit_request(prepared: Prepared, signed: common_pb2.Envelope) -> gateway_pb2.SubmitRequest:
    return gateway_pb2.SubmitRequest(
        transaction_id=prepared.tx_id, channel_id=prepared.channel, prepared_transaction=signed
    )


def commit_status_request(
    identity: SigningIdentity, *, channel: str, tx_id: str
) -> gateway_pb2.SignedCommitStatusRequest:
    request = _ser(
        gateway_pb2.CommitStatusRequest(transaction_id=tx_id, channel_id=channel, identity=identity.creator)
    )
    return gateway_pb2.SignedCommitStatusRequest(request=request, signature=identity.sign(request))


def chaincode_events_request(
    identity: SigningIdentity,
    *,
    channel: str,
    chaincode: str,
    start_block: int | None = None,
    after_tx_id: str | None = None,
) -> gateway_pb2.SignedChaincodeEventsRequest:
    """Start at ``start_block`` if given (``specified``), else at the next commit, skipping up to and
    including ``after_tx_id`` (the Node client's checkpoint form)."""
    if start_block is not None:
        if start_block < 0:
            raise ValueError("start_block must be >= 0")
        position = ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start_block))
    else:
        position = ab_pb2.SeekPosition(next_commit=ab_pb2.SeekNextCommit())
    req = gateway_pb2.ChaincodeEventsRequest(
        channel_id=channel, chaincode_id=chaincode, identity=identity.creator, start_position=position
    )
    if after_tx_id:
        req.after_transaction_id = after_tx_id
    request = _ser(req)
    return gateway_pb2.SignedChaincodeEventsRequest(request=request, signature=identity.sign(request))


#: The stop position of a seek that never ends: the largest block number (the Go client's choice).
_SEEK_FOREVER = 2**64 - 1


def seek_envelope(
    identity: SigningIdentity,
    *,
    channel: str,
    start_block: int | None,
    tls_cert_hash: bytes | None = None,
    timestamp: datetime | None = None,
) -> common_pb2.Envelope:
    """The signed DELIVER_SEEK_INFO envelope that opens a block stream (the official clients' layout:
    no tx id or nonce; the creator alone in the signature header).

    ``start_block`` None asks for the newest committed block first, so the first answer also says
    where the stream stands; it never stops by itself.
    """
    if start_block is not None and start_block < 0:
        raise ValueError("start_block must be >= 0")
    ch = common_pb2.ChannelHeader(type=common_pb2.DELIVER_SEEK_INFO, channel_id=channel, epoch=0)
    ch.timestamp.seconds, ch.timestamp.nanos = _seconds_nanos(timestamp or datetime.now(UTC))
    if tls_cert_hash:
        ch.tls_cert_hash = tls_cert_hash
    start = (
        ab_pb2.SeekPosition(newest=ab_pb2.SeekNewest())
        if start_block is None
        else ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=start_block))
    )
    seek = ab_pb2.SeekInfo(
        start=start,
        stop=ab_pb2.SeekPosition(specified=ab_pb2.SeekSpecified(number=_SEEK_FOREVER)),
        behavior=ab_pb2.SeekInfo.BLOCK_UNTIL_READY,
    )
    payload = _ser(
        common_pb2.Payload(
            header=common_pb2.Header(
                channel_header=_ser(ch),
                signature_header=_ser(common_pb2.SignatureHeader(creator=identity.creator)),
            ),
            data=_ser(seek),
        )
    )
    return common_pb2.Envelope(payload=payload, signature=identity.sign(payload))
