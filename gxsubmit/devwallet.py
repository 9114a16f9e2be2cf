"""Development wallet: a throw-away CA, the GX identities and TLS material for the emulator.

Certificates look like what Fabric CA enrolls (OU=client, role in the attribute extension
1.2.3.4.5.6.7.8.1, PKCS#8 keys) so that the same wallet code path is exercised in tests and demos.
Never use these keys for anything but local work.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gxsubmit.wallet import (
    CA_CERT,
    CLIENT_TLS_CERT,
    CLIENT_TLS_KEY,
    DEFAULT_IDENTITIES,
    ROLE_ATTR_OID,
    ROLE_ATTRIBUTE,
    TLSCA_CERT,
    WalletError,
)

__all__ = [
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "TLSCA_KEY",
    "DevCA",
    "add_arguments",
    "issue_identity",
    "make_dev_wallet",
    "new_ca",
    "run",
    "write_cert",
    "write_key",
]

CA_KEY = "ca-key"
TLSCA_KEY = "tlsca-key"
SERVER_CERT = "server-cert"
SERVER_KEY = "server-key"

_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class DevCA:
    """A CA certificate with its key (development only)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8, unencrypted: what Fabric CA writes into msp/keystore.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Digital signatures only, as Fabric's CAs issue them; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def new_ca(
    common_name: str, *, org: str = "org1.example.com", now: datetime | None = None, days: int = 3650
) -> DevCA:
    """A self-signed EC P-256 CA."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return DevCA(cert=cert, key=key)


def _leaf_builder(
    ca: DevCA, subject: x509.Name, pub: ec.EllipticCurvePublicKey, not_before: datetime, not_after: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )


def issue_identity(
    ca: DevCA,
    name: str,
    role: str | None,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ou: str = "client",
    extra_attrs: Mapping[str, str] | None = None,
    attr_value: bytes | None = None,
) -> tuple[bytes, bytes]:
    """An enrollment certificate as Fabric CA issues it; returns ``(cert_pem, key_pem)``.

    ``role=None`` leaves ``gxc_role`` out; ``attr_value`` overrides the raw extension bytes (tests).
    """
    now = datetime.now(UTC)
    not_before = not_before or now - _SKEW
    not_after = not_after or now + timedelta(days=365)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    attrs: dict[str, str] = {"hf.EnrollmentID": name, "hf.Type": ou, "hf.Affiliation": ""}
    if role is not None:
        attrs[ROLE_ATTRIBUTE] = role
    attrs.update(extra_attrs or {})
    value = (
        attr_value if attr_value is not None else json.dumps({"attrs": attrs}, separators=(",", ":")).encode()
    )
    cert = (
        _leaf_builder(ca, subject, key.public_key(), not_before, not_after)
        .add_extension(x509.UnrecognizedExtension(ROLE_ATTR_OID, value), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _issue_tls(ca: DevCA, cn: str, *, server: bool, days: int = 825) -> tuple[bytes, bytes]:
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = _leaf_builder(ca, subject, key.public_key(), now - _SKEW, now + timedelta(days=days))
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_key(path: Path, data: bytes) -> None:
    """Write a private key with mode 0600 from the start (no window where it is world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_cert(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def make_dev_wallet(
    directory: Path,
    *,
    msp_id: str = "Org1MSP",
    identities: Mapping[str, str] = DEFAULT_IDENTITIES,
    force: bool = False,
) -> None:
    """Create CA, identities, TLS CA, emulator server cert and a client TLS pair in ``directory``.

    Refuses (WalletError) to overwrite an existing wallet unless ``force``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if (directory / CA_CERT).exists() and not force:
        raise WalletError(directory / CA_CERT, "a wallet already exists here (use --force to replace it)")
    org = msp_id.removesuffix("MSP").lower() + ".example.com"
    ca = new_ca(f"ca.{org}", org=org)
    tlsca = new_ca(f"tlsca.{org}", org=org)
    write_cert(directory / CA_CERT, ca.cert_pem)
    write_key(directory / CA_KEY, _key_pem(ca.key))
    write_cert(directory / TLSCA_CERT, tlsca.cert_pem)
    write_key(directory / TLSCA_KEY, _key_pem(tlsca.key))
    for name, role in identities.items():
        cert_pem, key_pem = issue_identity(ca, name, role)
        write_cert(directory / f"{name}-cert", cert_pem)
        write_key(directory / f"{name}-key", key_pem)
    server_cert, server_key = _issue_tls(tlsca, "localhost", server=True)
    write_cert(directory / SERVER_CERT, server_cert)
    write_key(directory / SERVER_KEY, server_key)
    client_cert, client_key = _issue_tls(tlsca, "gxsubmit-client", server=False)
    write_cert(directory / CLIENT_TLS_CERT, client_cert)
    write_key(directory / CLIENT_TLS_KEY, client_key)


def load_ca(directory: Path) -> DevCA:
    """Read back a dev wallet's CA (to issue more identities in tests)."""
    directory = Path(directory)
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise WalletError(directory / CA_KEY, "not an EC key")
    return DevCA(cert=cert, key=key)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gxsubmit dev-wallet``."""
    parser.add_argument("directory", metavar="DIR", type=Path, help="wallet directory to create")
    parser.add_argument("--msp-id", default="Org1MSP", help="MSP id of the identities (default Org1MSP)")
    parser.add_argument(
        "--identity",
        action="append",
        metavar="NAME=ROLE",
        default=None,
        help="identity to create (repeatable); default: the three GX identities",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing wallet")


def _parse_identities(items: Sequence[str] | None) -> Mapping[str, str]:
    if not items:
        return DEFAULT_IDENTITIES
    out: dict[str, str] = {}
    for item in items:
        name, sep, role = item.partition("=")
        if not sep or not name or not role:
            raise ValueError(f"--identity {item!r}: expected NAME=ROLE")
        out[name] = role
    return out


def run(args: argparse.Namespace) -> int:
    """Body of ``gxsubmit dev-wallet DIR``."""
    import sys

    try:
        identities = _parse_identities(args.identity)
        make_dev_wallet(args.directory, msp_id=args.msp_id, identities=identities, force=args.force)
    except ValueError as exc:
        print(f"dev-wallet: {exc}", file=sys.stderr)
        return 2
    except WalletError as exc:
        print(f"dev-wallet: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dev-wallet: {args.directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    names = ", ".join(f"{n} ({r})" for n, r in identities.items())
    print(f"dev wallet written to {args.directory}: {names}; TLS server cert for localhost/127.0.0.1")
    return 0
