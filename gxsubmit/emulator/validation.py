"""The checks a peer (endorser, orderer, committer) makes on what a client sends.

Messages follow hyperledger/fabric's wording so that clients classify them as they would against a
real network. Identities are parsed and chain-checked once per distinct creator (cached); every
signature is verified exactly once per message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fabric_protos.common import common_pb2
from fabric_protos.ledger.rwset import rwset_pb2
from fabric_protos.ledger.rwset.kvrwset import kv_rwset_pb2
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    chaincode_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from gxsubmit.emulator import wire

__all__ = [
    "CODE_NAMES",
    "Creator",
    "CreatorInvalid",
    "EndorserError",
    "IdentityRegistry",
    "ParsedProposal",
    "TxInfo",
    "UnpackError",
    "compute_tx_id",
    "parse_envelope",
    "unpack_proposal",
    "validate_proposal",
    "verify_signature",
]

ROLE_ATTR_OID = x509.ObjectIdentifier("1.2.3.4.5.6.7.8.1")
_NODE_OUS = frozenset({"client", "peer", "admin", "orderer"})
_CURVE_ORDERS = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
    ),
}
_ECDSA_SHA256 = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
_ECDSA_SHA384 = ec.ECDSA(utils.Prehashed(hashes.SHA384()))

TX = transaction_pb2.TxValidationCode
CODE_NAMES: dict[int, str] = {v: k for k, v in TX.items()}


def compute_tx_id(nonce: bytes, creator: bytes) -> str:
    return hashlib.sha256(nonce + creator).hexdigest()


def verify_signature(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    """ECDSA over SHA-256(data) (SHA-384 for P-384 keys), DER, rejecting high-S like Fabric's BCCSP."""
    order = _CURVE_ORDERS.get(public_key.curve.name)
    if order is None or not signature:
        return False
    try:
        _r, s = utils.decode_dss_signature(signature)
    except ValueError:
        return False
    if s > order >> 1:
        return False  # "Invalid S. Must be smaller than half the order"
    if order == _CURVE_ORDERS["secp256r1"]:
        digest, algo = hashlib.sha256(data).digest(), _ECDSA_SHA256
    else:
        digest, algo = hashlib.sha384(data).digest(), _ECDSA_SHA384
    try:
        public_key.verify(signature, digest, algo)
    except InvalidSignature:
        return False
    return True


class CreatorInvalid(Exception):
    """The creator cannot act on the channel; ``str()`` is the reason (for logs only)."""

    def __init__(self, mspid: str | None, reason: str) -> None:
        super().__init__(reason)
        self.mspid = mspid


@dataclass(frozen=True, slots=True)
class Creator:
    raw: bytes
    mspid: str
    public_key: ec.EllipticCurvePublicKey
    role: str | None
    fingerprint: str  # sha256 hex of the certificate DER
    not_after: float  # POSIX seconds

    def expired(self, now: float) -> bool:
        return now > self.not_after


def _role_of(cert: x509.Certificate) -> str | None:
    # Deliberately not gxsubmit.wallet's parser: the emulator plays the chaincode's client-identity
    # library, and a shared bug on both sides would let a wrong certificate pass every test.
    try:
        ext = cert.extensions.get_extension_for_oid(ROLE_ATTR_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    try:
        attrs = json.loads(raw).get("attrs", {})
    except (ValueError, AttributeError):
        return None
    role = attrs.get("gxc_role") if isinstance(attrs, dict) else None
    return role if isinstance(role, str) else None


class IdentityRegistry:
    """The channel's MSP view: which creators are members (cached per serialized identity)."""

    def __init__(self, cas: dict[str, Sequence[x509.Certificate]], *, max_cache: int = 10_000) -> None:
        self._cas = cas
        self._cache: dict[bytes, Creator | CreatorInvalid] = {}
        self._max = max_cache

    @property
    def msp_ids(self) -> list[str]:
        return list(self._cas)

    def resolve(self, creator: bytes) -> Creator:
        hit = self._cache.get(creator)
        if hit is None:
            try:
                hit = self._build(creator)
            except CreatorInvalid as exc:
                hit = exc
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[creator] = hit
        if isinstance(hit, CreatorInvalid):
            raise hit
        return hit

    def _build(self, creator: bytes) -> Creator:
        sid = identities_pb2.SerializedIdentity()
        try:
            sid.ParseFromString(creator)
        except DecodeError:
            raise CreatorInvalid(None, "creator is malformed") from None
        cas = self._cas.get(sid.mspid)
        if cas is None:
            raise CreatorInvalid(sid.mspid, f"MSP {sid.mspid} is not defined on channel")
        try:
            cert = x509.load_pem_x509_certificate(sid.id_bytes)
        except ValueError:
            raise CreatorInvalid(sid.mspid, "could not decode certificate") from None
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name not in _CURVE_ORDERS:
            raise CreatorInvalid(sid.mspid, "unsupported public key algorithm")
        if not any(_issued_by(cert, ca) for ca in cas):
            raise CreatorInvalid(sid.mspid, "certificate not issued by a CA of the MSP")
        ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
        if sum(1 for ou in ous if ou in _NODE_OUS) != 1:
            raise CreatorInvalid(sid.mspid, "the identity must have exactly one NodeOU role")
        der = cert.public_bytes(Encoding.DER)
        return Creator(
            raw=creator,
            mspid=sid.mspid,
            public_key=pub,
            role=_role_of(cert),
            fingerprint=hashlib.sha256(der).hexdigest(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Proposals (Evaluate / Endorse)


class UnpackError(Exception):
    """The gateway could not unpack the request (INVALID_ARGUMENT)."""


class EndorserError(Exception):
    """The endorsing peer refused the proposal.

    ``no_response``: an auth filter rejected it (no proposal response; the gateway treats the peer
    as failed). Otherwise the endorser answered with status 500 and this message.
    """

    def __init__(self, message: str, *, no_response: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.no_response = no_response


@dataclass(slots=True)
class ParsedProposal:
    signed: proposal_pb2.SignedProposal
    channel_header_bytes: bytes
    signature_header_bytes: bytes
    channel_header: common_pb2.ChannelHeader
    nonce: bytes
    creator_bytes: bytes
    tx_id: str
    channel: str
    chaincode: str
    input_only_payload: bytes  # serialized ChaincodeProposalPayload without the transient map
    args: list[bytes]
    has_transient: bool

    @property
    def function(self) -> str:
        return self.args[0].decode("utf-8", "replace") if self.args else ""


def unpack_proposal(signed: proposal_pb2.SignedProposal) -> ParsedProposal:
    """Parse every layer of a signed proposal; UnpackError names the failing one."""
    if not signed.proposal_bytes:
        raise UnpackError("the proposed transaction must contain a signed proposal")
    try:
        prop = proposal_pb2.Proposal.FromString(signed.proposal_bytes)
        hdr = common_pb2.Header.FromString(prop.header)
        chdr = common_pb2.ChannelHeader.FromString(hdr.channel_header)
        shdr = common_pb2.SignatureHeader.FromString(hdr.signature_header)
        ext = proposal_pb2.ChaincodeHeaderExtension.FromString(chdr.extension)
        cpp = proposal_pb2.ChaincodeProposalPayload.FromString(prop.payload)
        cis = chaincode_pb2.ChaincodeInvocationSpec.FromString(cpp.input)
    except DecodeError as exc:
        raise UnpackError(f"error unmarshalling proposal: {exc}") from None
    if not ext.HasField("chaincode_id") or not ext.chaincode_id.name:
        raise UnpackError("ChaincodeHeaderExtension.ChaincodeId.Name is empty")
    if not cis.HasField("chaincode_spec") or not cis.chaincode_spec.HasField("input"):
        raise UnpackError("chaincode invocation spec did not contain a chaincode spec with input")
    if not cis.chaincode_spec.chaincode_id.name:
        raise UnpackError("chaincode id name is empty")
    input_only = wire.input_only_payload(cpp.input)
    return ParsedProposal(
        signed=signed,
        channel_header_bytes=hdr.channel_header,
        signature_header_bytes=hdr.signature_header,
        channel_header=chdr,
        nonce=shdr.nonce,
        creator_bytes=shdr.creator,
        tx_id=chdr.tx_id,
        channel=chdr.channel_id,
        chaincode=cis.chaincode_spec.chaincode_id.name,
        input_only_payload=input_only,
        args=list(cis.chaincode_spec.input.args),
        has_transient=len(cpp.TransientMap) > 0,
    )


def proposal_hash(pp: ParsedProposal) -> bytes:
    return hashlib.sha256(
        pp.channel_header_bytes + pp.signature_header_bytes + pp.input_only_payload
    ).digest()


def _fmt_ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")


def validate_proposal(
    pp: ParsedProposal, registry: IdentityRegistry, *, now: float, time_window_s: float | None
) -> Creator:
    """Auth filters then the endorser's header/creator/signature validation (Fabric order)."""
    # Auth filters (core/handlers/auth/filter): expiration, then the optional time window.
    creator: Creator | None = None
    try:
        creator = registry.resolve(pp.creator_bytes)
    except CreatorInvalid:
        creator = None
    if creator is not None and creator.expired(now):
        raise EndorserError("proposal client identity expired", no_response=True)
    if time_window_s is not None:
        ts = pp.channel_header.timestamp
        sent = ts.seconds + ts.nanos / 1e9
        if abs(now - sent) > time_window_s:
            raise EndorserError(
                f"request unauthorized due to incorrect timestamp {_fmt_ts(sent)}, peer time {_fmt_ts(now)}, "
                f"peer.authentication.timewindow {int(time_window_s // 60)}m{int(time_window_s % 60)}s",
                no_response=True,
            )
    # Endorser validation (core/endorser/msgvalidation.go).
    prefix = "error validating proposal: "
    chdr = pp.channel_header
    if chdr.type not in (common_pb2.ENDORSER_TRANSACTION, common_pb2.CONFIG):
        raise EndorserError(
            f"{prefix}invalid header type {common_pb2.HeaderType.Name(chdr.type)}"
            if chdr.type in common_pb2.HeaderType.values()
            else f"{prefix}invalid header type {chdr.type}"
        )
    if chdr.epoch != 0:
        raise EndorserError(f"{prefix}epoch is non-zero")
    if not pp.nonce:
        raise EndorserError(f"{prefix}nonce is empty")
    if not pp.creator_bytes:
        raise EndorserError(f"{prefix}creator is empty")
    expected = compute_tx_id(pp.nonce, pp.creator_bytes)
    if pp.tx_id != expected:
        raise EndorserError(f"{prefix}incorrectly computed txid '{pp.tx_id}' -- expected '{expected}'")
    if not pp.signed.signature:
        raise EndorserError(f"{prefix}empty signature bytes")
    if creator is not None and verify_signature(
        creator.public_key, pp.signed.proposal_bytes, pp.signed.signature
    ):
        return creator
    sid = identities_pb2.SerializedIdentity()  # only to word the refusal
    try:
        sid.ParseFromString(pp.creator_bytes)
    except DecodeError:
        raise EndorserError(
            f"{prefix}access denied: channel [{pp.channel}] creator org unknown, creator is malformed"
        ) from None
    raise EndorserError(f"{prefix}access denied: channel [{pp.channel}] creator org [{sid.mspid}]")


# ---------------------------------------------------------------------------------------------
# Transactions (Submit / commit)


@dataclass(slots=True)
class TxInfo:
    """Everything the committer and the ledger file need about one transaction."""

    tx_id: str
    channel: str
    chaincode: str
    args: list[bytes]
    creator: Creator | None
    mspid: str
    timestamp: float
    reads: list[tuple[str, tuple[int, int] | None]] = field(default_factory=list)
    writes: list[tuple[str, bytes | None]] = field(default_factory=list)
    event: chaincode_event_pb2.ChaincodeEvent | None = None
    endorsed_by: frozenset[str] = frozenset()
    code: int = TX.VALID  # a code decided before MVCC/duplicate checks (parse, signature, policy)
    payload: bytes = b""


def decode_rwset(
    results: bytes, chaincode: str
) -> tuple[list[tuple[str, tuple[int, int] | None]], list[tuple[str, bytes | None]]]:
    txrw = rwset_pb2.TxReadWriteSet.FromString(results)
    reads: list[tuple[str, tuple[int, int] | None]] = []
    writes: list[tuple[str, bytes | None]] = []
    for ns in txrw.ns_rwset:
        if ns.namespace != chaincode:
            raise ValueError(f"write to namespace {ns.namespace}")
        kv = kv_rwset_pb2.KVRWSet.FromString(ns.rwset)
        for r in kv.reads:
            reads.append((r.key, (r.version.block_num, r.version.tx_num) if r.HasField("version") else None))
        for w in kv.writes:
            writes.append((w.key, None if w.is_delete else w.value))
    return reads, writes


def parse_envelope(
    env: common_pb2.Envelope,
    registry: IdentityRegistry,
    endorser_keys: dict[bytes, tuple[str, ec.EllipticCurvePublicKey]],
) -> TxInfo:
    """Full committer-side parse of an envelope we have not seen (or that differs from what we endorsed).

    The envelope signature is NOT checked here (the caller verifies it once). ``TxInfo.code`` carries
    the first validation failure found.
    """
    info = TxInfo(
        tx_id="",
        channel="",
        chaincode="",
        args=[],
        creator=None,
        mspid="",
        timestamp=0.0,
        payload=env.payload,
    )
    try:
        payload = common_pb2.Payload.FromString(env.payload)
        chdr = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        shdr = common_pb2.SignatureHeader.FromString(payload.header.signature_header)
    except DecodeError:
        info.code = TX.BAD_PAYLOAD
        return info
    info.tx_id, info.channel = chdr.tx_id, chdr.channel_id
    info.timestamp = chdr.timestamp.seconds + chdr.timestamp.nanos / 1e9
    sid = identities_pb2.SerializedIdentity()
    try:
        sid.ParseFromString(shdr.creator)
    except DecodeError:
        pass
    info.mspid = sid.mspid
    if chdr.type != common_pb2.ENDORSER_TRANSACTION:
        info.code = TX.UNSUPPORTED_TX_PAYLOAD
        return info
    if chdr.epoch != 0 or not shdr.nonce or not shdr.creator:
        info.code = TX.BAD_COMMON_HEADER
        return info
    try:
        info.creator = registry.resolve(shdr.creator)
    except CreatorInvalid:
        info.code = TX.BAD_CREATOR_SIGNATURE
        return info
    if compute_tx_id(shdr.nonce, shdr.creator) != chdr.tx_id:
        info.code = TX.BAD_PROPOSAL_TXID
        return info
    try:
        ext = proposal_pb2.ChaincodeHeaderExtension.FromString(chdr.extension)
        info.chaincode = ext.chaincode_id.name
        tx = transaction_pb2.Transaction.FromString(payload.data)
        if len(tx.actions) != 1:
            info.code = TX.INVALID_ENDORSER_TRANSACTION
            return info
        action = tx.actions[0]
        cap = transaction_pb2.ChaincodeActionPayload.FromString(action.payload)
        cpp = proposal_pb2.ChaincodeProposalPayload.FromString(cap.chaincode_proposal_payload)
        cis = chaincode_pb2.ChaincodeInvocationSpec.FromString(cpp.input)
        info.args = list(cis.chaincode_spec.input.args)
        prp = proposal_response_pb2.ProposalResponsePayload.FromString(cap.action.proposal_response_payload)
        cc_action = proposal_pb2.ChaincodeAction.FromString(prp.extension)
    except DecodeError:
        info.code = TX.BAD_PAYLOAD
        return info
    expected_hash = hashlib.sha256(
        payload.header.channel_header + payload.header.signature_header + cap.chaincode_proposal_payload
    ).digest()
    if action.header != payload.header.signature_header or prp.proposal_hash != expected_hash:
        info.code = TX.INVALID_ENDORSER_TRANSACTION
        return info
    if cc_action.chaincode_id.name != info.chaincode:
        info.code = TX.INVALID_ENDORSER_TRANSACTION
        return info
    try:
        info.reads, info.writes = decode_rwset(cc_action.results, info.chaincode)
    except DecodeError:
        info.code = TX.BAD_RWSET
        return info
    except ValueError:
        info.code = TX.ILLEGAL_WRITESET
        return info
    if cc_action.events:
        try:
            info.event = chaincode_event_pb2.ChaincodeEvent.FromString(cc_action.events)
        except DecodeError:
            info.code = TX.BAD_RESPONSE_PAYLOAD
            return info
    endorsed: set[str] = set()
    for e in cap.action.endorsements:
        known = endorser_keys.get(e.endorser)
        if known and verify_signature(
            known[1], cap.action.proposal_response_payload + e.endorser, e.signature
        ):
            endorsed.add(known[0])
    info.endorsed_by = frozenset(endorsed)
    return info
