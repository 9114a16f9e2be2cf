"""TLS to PostgreSQL with sslmode=verify-full and a CA file (GXSUBMIT_DATABASE_CA), against a server of the
test's own whose certificate a test CA made; a wrong CA or host name stops start-up in one line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import (
    EmulatorProc,
    ServiceProc,
    all_finished,
    audit,
    clean_env,
    counts,
    enqueue_many,
    service_settings,
    users,
)
from tlsdb import TlsPostgres, tls_postgres
from waiting import wait_for

from gxsubmit.exitcodes import RET_CONFIG, RET_OK
from gxsubmit.pgembed import free_port

pytestmark = pytest.mark.slow

SCHEMA = "gx_tls"


@pytest.fixture
def tlspg() -> Iterator[TlsPostgres]:
    with tls_postgres() as t:
        yield t


def gxsubmit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gxsubmit", *args], env={**clean_env(), **env},
                          capture_output=True, text=True, timeout=120)


def test_verify_full_with_a_ca_file_migrates_and_commits_the_workload(
    tlspg: TlsPostgres, wallet: Path, tmp_path: Path, procs: list[Any]
) -> None:
    db = {"GXSUBMIT_DATABASE_URL": tlspg.url(), "GXSUBMIT_DATABASE_CA": str(tlspg.ca),
          "GXSUBMIT_SCHEMA": SCHEMA}
    migrated = gxsubmit(["migrate"], db)
    assert migrated.returncode == RET_OK, migrated.stderr
    checked = gxsubmit(["check", "--skip-gateway"], {**db, "GXSUBMIT_WALLET": str(wallet),
                                                     "GXSUBMIT_INSECURE": "true"})
    assert "ok   database route: direct (TLS)" in checked.stdout, checked.stdout + checked.stderr

    emu = EmulatorProc(wallet=wallet, workdir=tmp_path)
    procs.append(emu)
    emu.start()
    svc = ServiceProc("a", tmp_path, {**service_settings(tlspg.url(), SCHEMA, wallet, emu), **db})
    procs.append(svc)
    svc.start().wait_ready()
    total = enqueue_many(tlspg.url(), SCHEMA, users(60, "tls"), prefix="t")
    wait_for(lambda: all_finished(tlspg.url(), SCHEMA, total), 120, interval=0.2, what="all finished")
    assert counts(tlspg.url(), SCHEMA)["COMMITTED"] == total
    assert audit(tlspg.url(), SCHEMA, emu.ledger).exactly_once
    assert [d for d in svc.logs() if d.get("level") in ("error", "critical")] == []
    with psycopg.connect(tlspg.url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'gxsubmit:%'").fetchone()
    assert row is not None and row[0] >= 4 and row[1] == 0, row  # 3 workers x 3 + supervisor


@pytest.mark.parametrize(
    ("case", "setting"),
    [("wrong CA", "GXSUBMIT_DATABASE_CA"), ("wrong host name", "GXSUBMIT_DATABASE_URL")],
)
def test_a_wrong_ca_or_host_name_stops_start_up_in_one_line(
    tlspg: TlsPostgres, wallet: Path, tmp_path: Path, case: str, setting: str
) -> None:
    url = tlspg.url("wrong-host.test") if case == "wrong host name" else tlspg.url()
    ca = tlspg.other_ca if case == "wrong CA" else tlspg.ca
    env = {"GXSUBMIT_DATABASE_URL": url, "GXSUBMIT_DATABASE_CA": str(ca), "GXSUBMIT_WALLET": str(wallet),
           "GXSUBMIT_INSECURE": "true", "GXSUBMIT_GATEWAY": "127.0.0.1:9",
           "GXSUBMIT_METRICS_PORT": str(free_port()), "GXSUBMIT_RUNTIME_DIR": str(tmp_path / "run")}
    r = gxsubmit(["supervise"], env)
    assert r.returncode == RET_CONFIG, r.stdout + r.stderr
    lines = (r.stdout + r.stderr).splitlines()
    errors = [line for line in lines if '"level":"error"' in line.replace(" ", "")]
    assert len(errors) == 1 and "database TLS" in errors[0] and setting in errors[0], lines
    migrated = gxsubmit(["migrate"], env)
    assert migrated.returncode == RET_CONFIG and setting in migrated.stderr, migrated.stderr
    # every operator command connects as the workers do (cancel used the bare URL: no CA, no verify)
    cancelled = gxsubmit(["cancel", "--id", "00000000-0000-0000-0000-000000000001"], env)
    assert cancelled.returncode == RET_CONFIG and setting in cancelled.stderr, cancelled.stderr
