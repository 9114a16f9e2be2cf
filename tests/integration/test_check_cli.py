"""``gxsubmit check`` as an operator runs it: a real process against real PostgreSQL and the emulator.

One line per item, every problem at once, and the exit status says which kind failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gxsubmit.config import Config
from gxsubmit.devwallet import make_dev_wallet
from gxsubmit.emulator import Emulator
from gxsubmit.exitcodes import RET_CONFIG, RET_OK, RET_UNAVAILABLE
from gxsubmit.pgembed import free_port

IDENTITIES = ("org1-super-admin", "org1-admin", "org1-partner-api")


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[tuple[Emulator, int]]:
    make_dev_wallet(tmp_path / "wallet")
    e = Emulator(wallet=tmp_path / "wallet", ledger=tmp_path / "ledger.jsonl", block_time=0.1)
    port = e.start()
    try:
        yield e, port
    finally:
        e.stop()


def _check(**settings: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
    env.update(Config(**{"insecure": True, "connect_timeout": 3.0, **settings}).to_env())
    return subprocess.run(
        [sys.executable, "-m", "gxsubmit", "check"], env=env, capture_output=True, text=True, timeout=60
    )


def test_all_good(emu: tuple[Emulator, int], tmp_path: Path, pg_url: str, schema: str) -> None:
    _, port = emu
    r = _check(database_url=pg_url, schema=schema, gateway=f"127.0.0.1:{port}", wallet=tmp_path / "wallet")
    assert r.returncode == RET_OK, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert all(line.startswith("ok   ") for line in lines), r.stdout
    assert any(f"gateway 127.0.0.1:{port} reachable (plaintext)" in line for line in lines)
    assert any(f"database schema {schema}: outbox_commands readable" in line for line in lines)
    for name in IDENTITIES:  # each identity may follow the peer's blocks, as its worker will
        assert f"ok   commit stream as {name} on gxchannel: newest block 0" in lines, r.stdout
        # ... and look a tx id up in the ledger (a lost tx id of an expired certificate,
        # docs/design.md#rotated-certificates)
        assert f"ok   ledger lookup as {name} on gxchannel: ok (qscc GetTransactionByID)" in lines, r.stdout


def test_mutual_tls_with_the_wallet_client_pair(tmp_path: Path, pg_url: str, schema: str) -> None:
    """A peer that requires client certificates and binds deliver seeks to them: check connects with the
    wallet's client-tls pair, as the worker does, and the stream answers."""
    make_dev_wallet(tmp_path / "wallet")
    e = Emulator(wallet=tmp_path / "wallet", ledger=tmp_path / "l.jsonl", insecure=False, client_tls=True)
    port = e.start()
    try:
        r = _check(
            database_url=pg_url,
            schema=schema,
            gateway=f"127.0.0.1:{port}",
            wallet=tmp_path / "wallet",
            insecure=False,
        )
    finally:
        e.stop()
    assert r.returncode == RET_OK, r.stdout + r.stderr
    assert f"ok   gateway 127.0.0.1:{port} reachable (TLS)" in r.stdout
    assert "ok   commit stream as org1-admin on gxchannel: newest block 0" in r.stdout, r.stdout


def test_commit_stream_check_is_skipped_when_off(emu: tuple[Emulator, int], tmp_path: Path) -> None:
    _, port = emu
    r = _check(
        gateway=f"127.0.0.1:{port}",
        wallet=tmp_path / "wallet",
        commit_events=False,
        database_url="postgresql://unused",
    )
    assert "commit stream" not in r.stdout


def test_a_refused_commit_stream_is_a_warning(
    emu: tuple[Emulator, int], tmp_path: Path, pg_url: str, schema: str
) -> None:
    """A wallet from another CA: the peer refuses the seek (FORBIDDEN). The worker would fall back to
    CommitStatus, so this alone does not fail the check, but the operator is told."""
    _, port = emu
    make_dev_wallet(tmp_path / "other")
    r = _check(database_url=pg_url, schema=schema, gateway=f"127.0.0.1:{port}", wallet=tmp_path / "other")
    assert r.returncode == RET_OK, r.stdout + r.stderr
    assert (
        "ok   commit stream as org1-admin on gxchannel: WARNING: deliver DELIVER_FORBIDDEN: block stream on "
        "gxchannel answered "
        "FORBIDDEN (403); its worker will ask CommitStatus per transaction" in r.stdout
    ), r.stdout
    # Not a member either for a ledger query: the endorser refuses the proposal; only a warning.
    lookup = [ln for ln in r.stdout.splitlines() if ln.startswith("ok   ledger lookup as org1-admin")]
    assert len(lookup) == 1 and "WARNING: evaluate" in lookup[0], r.stdout
    assert lookup[0].endswith("a command whose old transaction the ledger lacks waits for an operator")


def test_every_problem_at_once_with_the_right_exit_status(tmp_path: Path, pg_url: str, schema: str) -> None:
    make_dev_wallet(tmp_path / "wallet")
    (tmp_path / "wallet" / "org1-admin-key").unlink()
    closed = free_port()
    r = _check(
        database_url=pg_url,
        schema=schema,
        gateway=f"127.0.0.1:{closed}",
        wallet=tmp_path / "wallet",
        connect_timeout=1.0,
    )
    assert r.returncode == RET_CONFIG, r.stdout + r.stderr  # configuration outranks unavailability
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL ")]
    assert any(line.startswith("FAIL wallet org1-admin:") and "org1-admin-key" in line for line in fails), (
        fails
    )
    assert any(line.startswith(f"FAIL gateway 127.0.0.1:{closed}:") for line in fails), fails
    # the two good identities and the database are still reported
    assert "ok   wallet org1-super-admin" in r.stdout and f"database schema {schema}" in r.stdout
    assert "PRIVATE KEY" not in r.stdout + r.stderr


def test_gateway_down_alone_is_unavailable(tmp_path: Path, pg_url: str, schema: str) -> None:
    make_dev_wallet(tmp_path / "wallet")
    r = _check(
        database_url=pg_url,
        schema=schema,
        gateway=f"127.0.0.1:{free_port()}",
        wallet=tmp_path / "wallet",
        connect_timeout=1.0,
    )
    assert r.returncode == RET_UNAVAILABLE, r.stdout + r.stderr
