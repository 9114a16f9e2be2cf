"""Wallet loading and validation: flat PEM files as a Kubernetes Secret mounts them.

Every failure is a :class:`WalletError` naming the file and the reason, so an operator can fix the
mount without reading code. Key material never appears in an error: reasons are our own fixed
strings and underlying parser exceptions are never chained.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gxsubmit.filesig import files_signature

__all__ = [
    "CA_CERT",
    "CLIENT_TLS_CERT",
    "CLIENT_TLS_KEY",
    "DEFAULT_IDENTITIES",
    "ROLE_ATTRIBUTE",
    "ROLE_ATTR_OID",
    "TLSCA_CERT",
    "WalletError",
    "WalletIdentity",
    "cert_path",
    "certificate_fingerprint",
    "check_tls_files",
    "fingerprint_of",
    "key_path",
    "load_certificate",
    "load_identity",
    "load_tls_ca",
    "load_tls_client",
    "read_role_attributes",
    "wallet_signature",
]

CA_CERT = "ca-cert"
TLSCA_CERT = "tlsca-cert"
CLIENT_TLS_CERT = "client-tls-cert"
CLIENT_TLS_KEY = "client-tls-key"

#: Fabric CA's attribute extension (attributes embedded in enrollment certificates).
ROLE_ATTR_OID = x509.ObjectIdentifier("1.2.3.4.5.6.7.8.1")
ROLE_ATTRIBUTE = "gxc_role"

#: identity name -> role the GX chaincode requires of it.
DEFAULT_IDENTITIES: Mapping[str, str] = {
    "org1-super-admin": "gx_super_admin",
    "org1-admin": "gx_admin",
    "org1-partner-api": "gx_partner_api",
}


class WalletError(Exception):
    """A wallet file is unusable. ``str(e)`` is ``"<file path>: <reason>"``; never key material."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class WalletIdentity:
    """A validated identity: certificate facts plus the private key (kept out of repr)."""

    name: str
    msp_id: str
    cert_pem: bytes
    role: str | None
    not_after: datetime
    fingerprint: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    not_before: datetime | None = None
    subject: str = ""


def cert_path(wallet: Path, name: str) -> Path:
    return Path(wallet) / f"{name}-cert"


def key_path(wallet: Path, name: str) -> Path:
    return Path(wallet) / f"{name}-key"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise WalletError(path, "file not found") from None
    except IsADirectoryError:
        raise WalletError(path, "is a directory, expected a PEM file") from None
    except PermissionError:
        raise WalletError(path, "permission denied reading the file") from None
    except OSError as exc:
        raise WalletError(path, f"cannot read file ({exc.strerror or type(exc).__name__})") from None


def _load_cert(path: Path) -> tuple[bytes, x509.Certificate]:
    data = _read(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise WalletError(path, "not a PEM certificate (no BEGIN CERTIFICATE block)")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise WalletError(path, "bad PEM certificate (cannot parse)") from None
    return data, cert


def _is_projected_secret(st: os.stat_result, euid: int | None = None, groups: set[int] | None = None) -> bool:
    """A Kubernetes Secret mounted for a non-root pod: owned by root, group = our fsGroup, mode 0440.

    Kubelet adds group read to ``defaultMode`` when ``fsGroup`` is set (kubernetes/kubernetes#57923),
    so 0440 is the strictest mode such a pod can get. Group read is accepted only in that shape:
    root-owned, not writable by anyone, nothing for others, and the group is one of ours.
    """
    euid = os.geteuid() if euid is None else euid
    groups = {os.getegid(), *os.getgroups()} if groups is None else groups
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o237 or st.st_uid != 0 or euid == 0:
        return False
    return st.st_gid in groups


def _check_key_mode(path: Path) -> None:
    try:
        st = os.stat(path)  # follows the Kubernetes ..data symlink to the real file
    except FileNotFoundError:
        raise WalletError(path, "file not found") from None
    except OSError as exc:
        raise WalletError(path, f"cannot stat file ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise WalletError(path, "not a regular file")
    if st.st_mode & 0o077 and not _is_projected_secret(st):
        raise WalletError(
            path,
            f"private key is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "chmod 0600 or set defaultMode: 0400 on the Secret",
        )


def _load_key(path: Path, *, check_mode: bool = True) -> ec.EllipticCurvePrivateKey:
    if check_mode:
        _check_key_mode(path)
    data = _read(path)
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise WalletError(path, "not a PEM private key (no BEGIN ... PRIVATE KEY block)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise WalletError(path, "private key is encrypted; an unencrypted PKCS#8 key is required") from None
    except Exception:  # parser errors (ValueError, UnsupportedAlgorithm) must not leak their text
        raise WalletError(path, "bad PEM private key (cannot parse)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise WalletError(path, f"unsupported key type {type(key).__name__}; an EC P-256 key is required")
    if not isinstance(key.curve, ec.SECP256R1):
        raise WalletError(path, f"unsupported curve {key.curve.name}; P-256 (secp256r1) is required")
    return key


def read_role_attributes(cert: x509.Certificate) -> dict[str, str] | None:
    """The Fabric CA attribute map of ``cert``, or None when the extension is absent.

    Raises ValueError when the extension is present but is not the JSON Fabric CA writes.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(ROLE_ATTR_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    try:
        doc: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("attribute extension 1.2.3.4.5.6.7.8.1 is not JSON") from None
    attrs = doc.get("attrs") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict):
        raise ValueError('attribute extension 1.2.3.4.5.6.7.8.1 has no "attrs" object')
    return {str(k): str(v) for k, v in attrs.items()}


def _fmt(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_identity(
    wallet: Path,
    name: str,
    *,
    msp_id: str,
    expected_role: str | None,
    now: datetime | None = None,
) -> WalletIdentity:
    """Load ``<name>-cert``/``<name>-key`` and check them against ``ca-cert`` and the expected role."""
    wallet = Path(wallet)
    now = now or datetime.now(UTC)
    cpath, kpath, capath = cert_path(wallet, name), key_path(wallet, name), wallet / CA_CERT

    cert_pem, cert = _load_cert(cpath)
    key = _load_key(kpath)
    if key.public_key().public_numbers() != _public_numbers(cert, cpath):
        raise WalletError(kpath, f"private key does not match certificate {cpath.name}")

    _, ca = _load_cert(capath)
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # ValueError/TypeError/InvalidSignature all mean "not issued by this CA"
        raise WalletError(
            cpath, f"certificate is not issued by {capath} (issuer or signature mismatch)"
        ) from None

    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        raise WalletError(cpath, f"certificate not yet valid (valid from {_fmt(not_before)})")
    if now > not_after:
        raise WalletError(cpath, f"certificate expired on {_fmt(not_after)}")

    try:
        attrs = read_role_attributes(cert)
    except ValueError as exc:
        raise WalletError(cpath, str(exc)) from None
    role = (attrs or {}).get(ROLE_ATTRIBUTE)
    if expected_role is not None:
        if role is None:
            raise WalletError(
                cpath, f"certificate has no {ROLE_ATTRIBUTE} attribute (expected {expected_role})"
            )
        if role != expected_role:
            raise WalletError(cpath, f"certificate has {ROLE_ATTRIBUTE}={role}, expected {expected_role}")

    fingerprint = certificate_fingerprint(cert)
    return WalletIdentity(
        name=name,
        msp_id=msp_id,
        cert_pem=cert_pem,
        role=role,
        not_after=not_after,
        fingerprint=fingerprint,
        private_key=key,
        not_before=not_before,
        subject=cert.subject.rfc4514_string(),
    )


def _public_numbers(cert: x509.Certificate, path: Path) -> ec.EllipticCurvePublicNumbers:
    pub = cert.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise WalletError(path, "certificate public key is not EC")
    return pub.public_numbers()


def load_tls_ca(wallet: Path) -> bytes | None:
    """PEM bytes of ``tlsca-cert`` if the wallet has one (validated), else None."""
    path = Path(wallet) / TLSCA_CERT
    if not path.exists():
        return None
    data, _ = _load_cert(path)
    return data


def load_tls_client(wallet: Path) -> tuple[bytes, bytes] | None:
    """Optional mutual-TLS pair ``client-tls-cert``/``client-tls-key`` as PEM bytes, or None."""
    cpath, kpath = Path(wallet) / CLIENT_TLS_CERT, Path(wallet) / CLIENT_TLS_KEY
    if not cpath.exists() and not kpath.exists():
        return None
    cert_pem = _load_pair(cpath, kpath, check_mode=True)
    return cert_pem, _read(kpath)


def _load_pair(cpath: Path, kpath: Path, *, check_mode: bool) -> bytes:
    """The certificate's PEM, after checking that the key at ``kpath`` belongs to it."""
    cert_pem, cert = _load_cert(cpath)
    key = _load_key(kpath, check_mode=check_mode)
    if key.public_key().public_numbers() != _public_numbers(cert, cpath):
        raise WalletError(kpath, f"private key does not match certificate {cpath.name}")
    return cert_pem


def check_tls_files(ca: Path, client_cert: Path, client_key: Path) -> None:
    """Raise WalletError unless ``ca`` holds PEM certificates and the client pair, if either file
    exists, is a certificate with its matching key. No file-mode rule: an explicit client key may
    live anywhere."""
    data = _read(ca)
    try:
        if not x509.load_pem_x509_certificates(data):
            raise ValueError
    except ValueError:
        raise WalletError(ca, "not a PEM certificate bundle (cannot parse)") from None
    if not client_cert.exists() and not client_key.exists():
        return
    _load_pair(client_cert, client_key, check_mode=False)


def wallet_signature(wallet: Path, names: Sequence[str]) -> str:
    """Cheap change detector for rotation of the wallet's files (see :func:`files_signature`)."""
    wallet = Path(wallet)
    files = [CA_CERT, TLSCA_CERT, CLIENT_TLS_CERT, CLIENT_TLS_KEY]
    for n in names:
        files += [f"{n}-cert", f"{n}-key"]
    return files_signature([wallet / f for f in files])


def load_certificate(path: Path) -> tuple[bytes, x509.Certificate]:
    """A PEM certificate file outside a wallet (gxsubmit record-expiry); WalletError says why not."""
    return _load_cert(path)


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """sha256 hex of the DER certificate: which certificate a wallet holds (rows written before migration
    0008 stored it as their creator fingerprint; later rows store the serialized creator's)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def fingerprint_of(cert_pem: bytes) -> str:
    """:func:`certificate_fingerprint` of a PEM certificate."""
    return certificate_fingerprint(x509.load_pem_x509_certificate(cert_pem))
