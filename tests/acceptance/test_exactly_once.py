"""Exactly once on the ledger, audited ledger file vs table, across crashes and outages."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import (
    EmulatorProc,
    ServiceProc,
    all_finished,
    audit,
    counts,
    enqueue_many,
    held_by,
    run_sync,
    service_settings,
    users,
)
from waiting import wait_for

pytestmark = pytest.mark.slow


def start(procs: list[Any], tmp_path: Path, name: str, settings: dict[str, str]) -> ServiceProc:
    svc = ServiceProc(name, tmp_path, settings)
    procs.append(svc)
    return svc.start()


def slow_emulator(wallet: Path, tmp_path: Path, procs: list[Any]) -> EmulatorProc:
    # One-second blocks: hundreds of transactions wait for commit at any moment.
    emu = EmulatorProc(wallet=wallet, workdir=tmp_path, extra=("--block-time", "1.0"))
    procs.append(emu)
    emu.start()
    return emu


def busy_statements(url: str, prefix: str) -> int:
    """Statements of the given application_name prefix PostgreSQL is still executing."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s AND state = 'active'",
            (prefix + "%",),
        ).fetchone()
    return int(row[0]) if row else 0


def assert_exactly_once(pg_url: str, schema: str, emu: EmulatorProc, total: int) -> None:
    c = counts(pg_url, schema)
    assert c["COMMITTED"] == total, c  # none lost, none FAILED (only good commands here)
    result = audit(pg_url, schema, emu.ledger)
    assert result.exactly_once, result
    assert result.valid_txs == total


def test_sigkill_of_a_whole_supervisor_then_takeover(
    pg_url: str, schema: str, wallet: Path, tmp_path: Path, procs: list[Any]
) -> None:
    emu = slow_emulator(wallet, tmp_path, procs)
    settings = service_settings(pg_url, schema, wallet, emu, GXSUBMIT_LEASE_SECONDS="3")
    a = start(procs, tmp_path, "a", settings)
    a.wait_ready()
    total = enqueue_many(pg_url, schema, users(800, "kill"), prefix="k")

    # When hundreds are in flight (some already submitted), the supervisor and its workers die at once
    def submitted_in_flight() -> bool:
        c = counts(pg_url, schema)
        return c["SUBMITTED"] >= 50 and c["COMMITTED"] > 0

    wait_for(submitted_in_flight, 60, interval=0.05, what="submitted work in flight")
    # Freeze supervisor a and its workers, let statements they already sent finish, and only kill
    # them once rows are seen held: a block cut just before the kill could otherwise leave nothing
    # in flight, and the takeover below would have nothing to take over.
    assert a.proc is not None
    group = a.proc.pid

    def frozen_with_rows_held() -> bool:
        os.killpg(group, signal.SIGSTOP)
        wait_for(lambda: not busy_statements(pg_url, "gxsubmit:a:"), 10, what="a's statements done")
        if held_by(pg_url, schema, "a") > 0:
            return True
        os.killpg(group, signal.SIGCONT)
        return False

    wait_for(frozen_with_rows_held, 30, interval=0.05, what="supervisor a frozen with rows held")
    a.kill_group()
    assert held_by(pg_url, schema, "a") > 0  # the dead supervisor's rows wait for their leases

    # Then a second supervisor takes the rows over when the leases expire and finishes them exactly once
    b = start(procs, tmp_path, "b", settings)
    b.wait_ready()
    wait_for(lambda: all_finished(pg_url, schema, total), 120, interval=0.2, what="all finished")
    assert_exactly_once(pg_url, schema, emu, total)


def test_two_supervisors_share_one_database(
    pg_url: str, schema: str, wallet: Path, tmp_path: Path, procs: list[Any]
) -> None:
    emu = slow_emulator(wallet, tmp_path, procs)
    settings = service_settings(pg_url, schema, wallet, emu)
    a = start(procs, tmp_path, "a", settings)
    b = start(procs, tmp_path, "b", settings)
    a.wait_ready()
    b.wait_ready()
    total = enqueue_many(pg_url, schema, users(1000, "two"), prefix="t")
    wait_for(lambda: all_finished(pg_url, schema, total), 120, interval=0.2, what="all finished")
    assert_exactly_once(pg_url, schema, emu, total)
    # Both did real work.
    assert a.metric("gxsubmit_commands_committed_total") > 0
    assert b.metric("gxsubmit_commands_committed_total") > 0


def test_gateway_outage_waits_reports_and_resumes(
    pg_url: str, schema: str, wallet: Path, tmp_path: Path, procs: list[Any]
) -> None:
    emu = slow_emulator(wallet, tmp_path, procs)
    svc = start(procs, tmp_path, "svc", service_settings(pg_url, schema, wallet, emu))
    svc.wait_ready()
    total = enqueue_many(pg_url, schema, users(400, "gw"), prefix="g")
    wait_for(lambda: counts(pg_url, schema)["SUBMITTED"] >= 20, 60, interval=0.05, what="work in flight")

    # When the gateway goes away with work in flight
    emu.stop()
    more = enqueue_many(pg_url, schema, users(50, "gw2"), prefix="g2")

    # Then /readyz says why, and rows wait (PENDING with a later next_attempt_at), none FAILED
    def not_ready() -> str:
        code, text = svc.readyz()
        return text if code == 503 and ("gateway" in text or "breaker" in text) else ""

    wait_for(not_ready, 30, what="/readyz reports the gateway")
    assert counts(pg_url, schema)["FAILED"] == 0

    # And when the gateway returns on the same address and ledger, work resumes by itself
    emu.start()
    wait_for(lambda: all_finished(pg_url, schema, total + more), 120, interval=0.2, what="all finished")
    svc.wait_ready(60)
    assert_exactly_once(pg_url, schema, emu, total + more)


def test_database_restart_waits_reports_and_resumes(wallet: Path, tmp_path: Path, procs: list[Any]) -> None:
    from gxsubmit.outbox import migrate
    from gxsubmit.pgembed import EmbeddedPostgres, free_port

    pg = EmbeddedPostgres(tmp_path / "pgdata", port=free_port())
    pg.start()
    try:

        async def go() -> int:
            async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as conn:
                return await migrate(conn, "public")

        run_sync(go())
        emu = slow_emulator(wallet, tmp_path, procs)
        svc = start(procs, tmp_path, "svc", service_settings(pg.url, "public", wallet, emu))
        svc.wait_ready()
        total = enqueue_many(pg.url, "public", users(300, "db"), prefix="d")
        wait_for(lambda: counts(pg.url, "public")["COMMITTED"] > 0, 60, interval=0.05, what="some committed")

        # When PostgreSQL stops, /readyz says so and nothing crashes
        pg.stop()

        def not_ready() -> str:
            code, text = svc.readyz()
            return text if code == 503 and "database unavailable" in text else ""

        wait_for(not_ready, 30, what="/readyz reports the database")
        assert svc.http("/healthz")[0] == 200
        assert svc.proc is not None and svc.proc.poll() is None

        # Then when it is back on the same port, work resumes by itself
        pg.start()
        more = enqueue_many(pg.url, "public", users(50, "db2"), prefix="d2")
        wait_for(lambda: all_finished(pg.url, "public", total + more), 120, interval=0.2, what="all finished")
        svc.wait_ready(60)
        assert_exactly_once(pg.url, "public", emu, total + more)
        restarts = svc.status()["workers"]
        assert all(w["restarts"] == 0 for w in restarts.values()), restarts  # no restart storm
    finally:
        for p in procs:
            if isinstance(p, ServiceProc):
                p.kill_group()
        pg.stop()
