"""Signing identity: the creator bytes Fabric expects and low-S ECDSA P-256 signatures."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from fabric_protos.msp import identities_pb2

from gxsubmit.wallet import WalletIdentity, certificate_fingerprint

__all__ = ["P256_ORDER", "SigningIdentity", "creator_fingerprint", "serialize_identity"]

#: Order n of the P-256 group; Fabric rejects signatures with S > n/2.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def serialize_identity(msp_id: str, cert_pem: bytes) -> bytes:
    """msp.SerializedIdentity with the PEM bytes verbatim (as the official clients do)."""
    data: bytes = identities_pb2.SerializedIdentity(mspid=msp_id, id_bytes=cert_pem).SerializeToString(
        deterministic=True
    )
    return data


def creator_fingerprint(creator: bytes) -> str:
    """sha256 hex of the serialized creator: what the tx id hashes (MSP id and the PEM bytes as read),
    so the same certificate re-encoded (CRLF, no final newline, a chain appended) is another creator."""
    return hashlib.sha256(creator).hexdigest()


class SigningIdentity:
    """An MSP identity that signs with its private key.

    ``deterministic=True`` uses RFC 6979 nonces (byte-identical to the Node client's signer; used by the
    interoperability test). Random nonces are equally valid for Fabric.
    """

    __slots__ = ("_algo", "_deterministic", "_key", "cert_pem", "creator", "creator_fingerprint",
                 "fingerprint", "msp_id", "name")

    def __init__(
        self,
        *,
        msp_id: str,
        cert_pem: bytes,
        private_key: ec.EllipticCurvePrivateKey,
        name: str = "",
        deterministic: bool = False,
    ) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError("only EC P-256 keys are supported")
        self.msp_id = msp_id
        self.cert_pem = cert_pem
        self.name = name
        self.creator = serialize_identity(msp_id, cert_pem)
        #: what rows record (0008): two encodings of one certificate are two creators and two tx ids
        self.creator_fingerprint = creator_fingerprint(self.creator)
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.fingerprint = certificate_fingerprint(cert)
        self._key = private_key
        self._deterministic = deterministic
        # Built once: three signatures per command, and the algorithm object is immutable.
        self._algo = ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=deterministic)

    @classmethod
    def from_wallet(cls, identity: WalletIdentity, *, deterministic: bool = False) -> SigningIdentity:
        return cls(
            msp_id=identity.msp_id,
            cert_pem=identity.cert_pem,
            private_key=identity.private_key,
            name=identity.name,
            deterministic=deterministic,
        )

    def as_creator(self, creator: bytes) -> SigningIdentity | None:
        """This key under another serialized creator, if that creator's certificate is for this key
        (the same certificate in other bytes, or under another MSP id); None otherwise."""
        try:
            ident = identities_pb2.SerializedIdentity.FromString(creator)
            cert = x509.load_pem_x509_certificate(ident.id_bytes)
        except Exception:  # not a creator we can use: the caller resolves the tx id instead
            return None
        if cert.public_key() != self._key.public_key():
            return None
        twin = SigningIdentity(msp_id=ident.mspid, cert_pem=ident.id_bytes, private_key=self._key,
                               name=self.name, deterministic=self._deterministic)
        return twin if twin.creator == creator else None

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA signature over SHA-256(data), S normalised to the lower half."""
        return self.sign_digest(hashlib.sha256(data).digest())

    def sign_digest(self, digest: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(digest, self._algo))
        if s > P256_ORDER // 2:
            s = P256_ORDER - s
        return encode_dss_signature(r, s)

    def __repr__(self) -> str:
        return f"SigningIdentity(name={self.name!r}, msp_id={self.msp_id!r}, cert={self.fingerprint[:16]})"
