"""The emulated network's names and addresses, and its endorsing peers' identities (persisted next to
the ledger so envelopes survive a restart)."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID
from fabric_protos.msp import identities_pb2

CHANNEL = "gxchannel"
#: the query system chaincode; only GetTransactionByID is served (the worker asks it about lost tx ids)
QSCC = "qscc"
ENDORSING_ORGS = ("Org1MSP", "Org2MSP")  # the chaincode's MAJORITY policy needs both
PEER_ADDRESSES = {"Org1MSP": "peer0.org1.example.com:7051", "Org2MSP": "peer0.org2.example.com:9051"}
ORDERER_ADDRESS, ORDERER_MSP = "orderer.example.com:7050", "OrdererMSP"
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256_HALF_N = _P256_N >> 1
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class EmulatorError(Exception):
    """The emulator cannot start (bad wallet, port in use, unreadable ledger)."""


# ---------------------------------------------------------------------------------------------
# Endorsing peers' identities (persisted next to the ledger so envelopes survive a restart)


@dataclasses.dataclass(frozen=True)
class _Endorser:
    mspid: str
    address: str
    identity: bytes  # serialized msp.SerializedIdentity
    key: ec.EllipticCurvePrivateKey

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA-SHA256, normalised to low S as Fabric's BCCSP does."""
        sig = self.key.sign(data, _ECDSA_SHA256)
        r, s = utils.decode_dss_signature(sig)
        return sig if s <= _P256_HALF_N else utils.encode_dss_signature(r, _P256_N - s)


def _new_peer_cert(mspid: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    host = PEER_ADDRESSES[mspid].split(":")[0]
    org = host.split(".", 1)[1]
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "peer"),
            x509.NameAttribute(NameOID.COMMON_NAME, host),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_endorsers(path: Path) -> dict[str, _Endorser]:
    doc: dict[str, dict[str, str]] = {}
    if path.exists():
        doc = json.loads(path.read_text())
    changed = False
    out: dict[str, _Endorser] = {}
    for mspid in ENDORSING_ORGS:
        entry = doc.get(mspid)
        if entry is None:
            key = ec.generate_private_key(ec.SECP256R1())
            entry = {
                "cert": _new_peer_cert(mspid, key).decode(),
                "key": key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
            }
            doc[mspid] = entry
            changed = True
        loaded = serialization.load_pem_private_key(entry["key"].encode(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise EmulatorError(f"{path}: endorser key of {mspid} is not an EC key")
        ident = identities_pb2.SerializedIdentity(mspid=mspid, id_bytes=entry["cert"].encode())
        out[mspid] = _Endorser(mspid, PEER_ADDRESSES[mspid], ident.SerializeToString(), loaded)
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    return out

