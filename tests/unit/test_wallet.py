"""Wallet validation: every broken-wallet case names the file and the reason, never key material."""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gxsubmit import devwallet
from gxsubmit.devwallet import issue_identity, load_ca, make_dev_wallet, new_ca
from gxsubmit.wallet import (
    DEFAULT_IDENTITIES,
    WalletError,
    WalletIdentity,
    check_tls_files,
    load_identity,
    load_tls_ca,
    load_tls_client,
    wallet_signature,
)

NAME, ROLE = "org1-admin", "gx_admin"
BAD_CERT = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
BAD_KEY = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def wallet(tmp_path: Path) -> Path:
    w = tmp_path / "wallet"
    make_dev_wallet(w)
    return w


def _load(w: Path, name: str = NAME, role: str | None = ROLE, **kw: Any) -> WalletIdentity:
    return load_identity(w, name, msp_id="Org1MSP", expected_role=role, **kw)


def _replace(w: Path, name: str, cert_pem: bytes, key_pem: bytes) -> None:
    devwallet.write_cert(w / f"{name}-cert", cert_pem)
    devwallet.write_key(w / f"{name}-key", key_pem)


def test_dev_wallet_layout_modes_and_roles(wallet: Path) -> None:
    assert os.stat(wallet).st_mode & 0o777 == 0o700
    for name, role in DEFAULT_IDENTITIES.items():
        wi = load_identity(wallet, name, msp_id="Org1MSP", expected_role=role)
        assert wi.role == role and wi.name == name
        assert wi.not_after > datetime.now(UTC) + timedelta(days=300)
        assert len(wi.fingerprint) == 64
        assert "client" in wi.subject and wi.cert_pem == (wallet / f"{name}-cert").read_bytes()
        assert os.stat(wallet / f"{name}-key").st_mode & 0o777 == 0o600
        assert (wallet / f"{name}-key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    for key in ("ca-key", "tlsca-key", "server-key", "client-tls-key"):
        assert os.stat(wallet / key).st_mode & 0o777 == 0o600
    assert load_tls_ca(wallet) is not None
    pair = load_tls_client(wallet)
    assert pair is not None and pair[0].startswith(b"-----BEGIN CERTIFICATE")


def test_server_certificate_names_localhost(wallet: Path) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((wallet / "server-cert").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    tlsca = x509.load_pem_x509_certificate((wallet / "tlsca-cert").read_bytes())
    cert.verify_directly_issued_by(tlsca)


def test_refuses_to_overwrite_without_force(wallet: Path) -> None:
    before = (wallet / "ca-cert").read_bytes()
    with pytest.raises(WalletError, match="already exists"):
        make_dev_wallet(wallet)
    assert (wallet / "ca-cert").read_bytes() == before
    make_dev_wallet(wallet, force=True)
    assert (wallet / "ca-cert").read_bytes() != before


def test_cli_refuses_existing_then_forces(wallet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    devwallet.add_arguments(parser)
    assert devwallet.run(parser.parse_args([str(wallet)])) == 1
    assert "already exists" in capsys.readouterr().err
    assert devwallet.run(parser.parse_args([str(wallet), "--force", "--identity", "bot=gx_admin"])) == 0
    assert load_identity(wallet, "bot", msp_id="Org1MSP", expected_role="gx_admin").role == "gx_admin"


def _mutations() -> dict[str, tuple[Callable[[Path], None], str, str]]:
    """case -> (break the wallet, file expected in the message, reason fragment)."""

    def missing_cert(w: Path) -> None:
        (w / f"{NAME}-cert").unlink()

    def missing_key(w: Path) -> None:
        (w / f"{NAME}-key").unlink()

    def missing_ca(w: Path) -> None:
        (w / "ca-cert").unlink()

    def bad_cert_pem(w: Path) -> None:
        (w / f"{NAME}-cert").write_bytes(
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
        )

    def not_pem(w: Path) -> None:
        (w / f"{NAME}-cert").write_bytes(b"hello")

    def bad_key_pem(w: Path) -> None:
        devwallet.write_key(
            w / f"{NAME}-key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )

    def key_mismatch(w: Path) -> None:
        devwallet.write_key(w / f"{NAME}-key", (w / "org1-partner-api-key").read_bytes())

    def key_group_readable(w: Path) -> None:
        os.chmod(w / f"{NAME}-key", 0o640)

    def key_world_readable(w: Path) -> None:
        os.chmod(w / f"{NAME}-key", 0o644)

    def expired(w: Path) -> None:
        now = datetime.now(UTC)
        _replace(
            w,
            NAME,
            *issue_identity(
                load_ca(w), NAME, ROLE, not_before=now - timedelta(days=10), not_after=now - timedelta(days=1)
            ),
        )

    def not_yet_valid(w: Path) -> None:
        now = datetime.now(UTC)
        _replace(
            w,
            NAME,
            *issue_identity(
                load_ca(w), NAME, ROLE, not_before=now + timedelta(days=1), not_after=now + timedelta(days=10)
            ),
        )

    def other_ca(w: Path) -> None:
        _replace(w, NAME, *issue_identity(new_ca("ca.evil.example.com"), NAME, ROLE))

    def forged_same_name_ca(w: Path) -> None:
        # same subject as the real CA, different key: only the signature check catches it
        real = load_ca(w)
        fake = new_ca("ca.org1.example.com", org="org1.example.com")
        assert fake.cert.subject == real.cert.subject
        _replace(w, NAME, *issue_identity(fake, NAME, ROLE))

    def wrong_role(w: Path) -> None:
        _replace(w, NAME, *issue_identity(load_ca(w), NAME, "gx_partner_api"))

    def no_role(w: Path) -> None:
        _replace(w, NAME, *issue_identity(load_ca(w), NAME, None))

    def garbage_attrs(w: Path) -> None:
        _replace(w, NAME, *issue_identity(load_ca(w), NAME, ROLE, attr_value=b"\x00not json"))

    c, k, ca = f"{NAME}-cert", f"{NAME}-key", "ca-cert"
    return {
        "missing cert": (missing_cert, c, "file not found"),
        "missing key": (missing_key, k, "file not found"),
        "missing ca": (missing_ca, ca, "file not found"),
        "bad cert PEM": (bad_cert_pem, c, "bad PEM certificate"),
        "not PEM": (not_pem, c, "not a PEM certificate"),
        "bad key PEM": (bad_key_pem, k, "bad PEM private key"),
        "key/cert mismatch": (key_mismatch, k, "does not match certificate"),
        "key group-readable": (key_group_readable, k, "accessible by group or others (mode 0640)"),
        "key world-readable": (key_world_readable, k, "mode 0644"),
        "expired": (expired, c, "certificate expired on"),
        "not yet valid": (not_yet_valid, c, "not yet valid"),
        "other CA": (other_ca, c, "not issued by"),
        "forged CA same name": (forged_same_name_ca, c, "not issued by"),
        "wrong role": (wrong_role, c, "gxc_role=gx_partner_api, expected gx_admin"),
        "missing role": (no_role, c, "no gxc_role attribute (expected gx_admin)"),
        "garbage attribute extension": (garbage_attrs, c, "not JSON"),
    }


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_broken_wallet_names_file_and_reason(
    wallet: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    mutate, fname, reason = _mutations()[case]
    key_body = _key_body(wallet / f"{NAME}-key") if (wallet / f"{NAME}-key").exists() else b""
    mutate(wallet)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WalletError) as info:
        _load(wallet)
    err = info.value
    assert str(err).startswith(f"{wallet / fname}: "), str(err)
    assert reason in str(err)
    assert err.path == str(wallet / fname)
    _assert_no_key_material(err, caplog, wallet, extra=key_body)


def test_role_not_checked_when_not_expected(wallet: Path) -> None:
    _replace(wallet, NAME, *issue_identity(load_ca(wallet), NAME, None))
    wi = load_identity(wallet, NAME, msp_id="Org1MSP", expected_role=None)
    assert wi.role is None


def test_now_is_injectable_for_expiry(wallet: Path) -> None:
    wi = _load(wallet)
    later = wi.not_after + timedelta(seconds=1)
    with pytest.raises(WalletError, match="expired"):
        _load(wallet, now=later)


def _key_body(path: Path) -> bytes:
    lines = path.read_bytes().splitlines()
    return b"".join(line for line in lines if not line.startswith(b"-----"))


def _assert_no_key_material(
    err: BaseException, caplog: pytest.LogCaptureFixture, wallet: Path, extra: bytes = b""
) -> None:
    text = "".join(traceback.format_exception(err)) + repr(err) + caplog.text
    text += "".join(r.getMessage() + repr(r.args) for r in caplog.records)
    bodies = [extra] if extra else []
    for f in wallet.iterdir():
        if f.name.endswith("-key") and f.is_file():
            bodies.append(_key_body(f))
    for body in bodies:
        for i in range(0, max(1, len(body) - 40), 40):  # any 40-char slice of any key body
            assert body[i : i + 40].decode() not in text
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_no_key_material_in_errors_logs_or_repr(wallet: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wi = _load(wallet)
    body = _key_body(wallet / f"{NAME}-key").decode()
    assert body[:40] not in repr(wi) and "private_key" not in repr(wi)
    # a key that is almost right: corrupted in the middle
    raw = (wallet / f"{NAME}-key").read_bytes()
    corrupted = raw.replace(raw[60:64], b"!!!!")
    devwallet.write_key(wallet / f"{NAME}-key", corrupted)
    with pytest.raises(WalletError) as info:
        _load(wallet)
    _assert_no_key_material(info.value, caplog, wallet, extra=_key_body(wallet / f"{NAME}-key"))
    # an unsupported key type
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    devwallet.write_key(wallet / f"{NAME}-key", ed)
    with pytest.raises(WalletError, match="unsupported key type") as info2:
        _load(wallet)
    _assert_no_key_material(info2.value, caplog, wallet)


def test_signature_changes_on_atomic_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes projects a Secret as name -> ..data/name with ..data -> ..<timestamp>; it swaps ..data."""
    mount = tmp_path / "mount"
    mount.mkdir()
    v1, v2 = mount / "..2026_01", mount / "..2026_02"
    make_dev_wallet(v1)
    make_dev_wallet(v2)
    (mount / "..data").symlink_to(v1.name)
    for f in v1.iterdir():
        (mount / f.name).symlink_to(Path("..data") / f.name)
    names = list(DEFAULT_IDENTITIES)
    sig1 = wallet_signature(mount, names)
    assert wallet_signature(mount, names) == sig1  # stable while nothing changes
    fp1 = _load(mount).fingerprint
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(v2.name)
    os.replace(tmp_link, mount / "..data")  # the atomic swap
    sig2 = wallet_signature(mount, names)
    assert sig2 != sig1
    assert _load(mount).fingerprint != fp1


def test_signature_changes_when_a_file_is_rewritten_or_removed(wallet: Path) -> None:
    names = list(DEFAULT_IDENTITIES)
    sig = wallet_signature(wallet, names)
    _replace(wallet, NAME, *issue_identity(load_ca(wallet), NAME, ROLE))
    sig2 = wallet_signature(wallet, names)
    assert sig2 != sig
    (wallet / "tlsca-cert").unlink()
    assert wallet_signature(wallet, names) != sig2
    assert load_tls_ca(wallet) is None


def test_tls_files_check_accepts_a_bundle_and_refuses_what_a_channel_could_not_use(wallet: Path) -> None:
    ca, cert, key = wallet / "tlsca-cert", wallet / "client-tls-cert", wallet / "client-tls-key"
    check_tls_files(ca, cert, key)
    # A bundle of two CAs (old and new during a rotation) is fine; no client pair at all too.
    other = new_ca("tlsca2.org1.example.com", org="org1.example.com")
    devwallet.write_cert(ca, ca.read_bytes() + other.cert_pem)
    check_tls_files(ca, wallet / "absent-cert", wallet / "absent-key")
    # The client key of another certificate
    _, foreign_key = devwallet._issue_tls(other, "gxsubmit-client", server=False)
    devwallet.write_key(key, foreign_key)
    with pytest.raises(WalletError, match="does not match certificate client-tls-cert"):
        check_tls_files(ca, cert, key)
    # A CA file that is not PEM, and a client certificate without its key
    devwallet.write_cert(ca, BAD_CERT)
    with pytest.raises(WalletError, match="tlsca-cert: not a PEM certificate bundle"):
        check_tls_files(ca, cert, key)
    devwallet.write_cert(ca, other.cert_pem)
    key.unlink()
    with pytest.raises(WalletError, match="client-tls-key: file not found"):
        check_tls_files(ca, cert, key)
