"""Exactly once when the database loses its latest writes (issue 15): a restore from a dump taken
mid-run, and a failover to a streaming standby that lacks the last commits. Real supervisors, the
emulator as a process (its ledger outlives the database's memory), PostgreSQL instances of the test's
own, and the ledger audit after each."""

from __future__ import annotations

import hashlib
import os
import subprocess
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
    run_sync,
    service_settings,
    users,
)
from waiting import wait_for

from gxsubmit.outbox import migrate
from gxsubmit.pgembed import SYSTEM_USER, EmbeddedPostgres, _bin_dir, free_port

pytestmark = pytest.mark.slow


def _migrate(url: str) -> None:
    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await migrate(conn, "public")

    run_sync(go())


def _mints(n: int, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    return [("MINT", {"toUserId": f"{prefix}-acct-{i % 20}", "amount": 1 + i % 5,
                      "remark": f"{prefix}-{i}-{hashlib.sha256(prefix.encode()).hexdigest()[:6]}"})
            for i in range(n)]


def _work(prefix: str, n_users: int, n_mints: int) -> list[tuple[str, dict[str, Any]]]:
    items: list[tuple[str, dict[str, Any]]] = []
    for u, m in zip(users(n_users, prefix), _mints(n_mints, prefix), strict=False):
        items += [u, m]
    return items + users(n_users, prefix)[n_mints:] + _mints(n_mints, prefix)[n_users:]


def _exactly_once(url: str, emu: EmulatorProc, total: int) -> None:
    c = counts(url, "public")
    assert c["COMMITTED"] == total, c  # every row COMMITTED: none FAILED "user exists"
    result = audit(url, "public", emu.ledger)
    assert result.exactly_once, result
    assert result.valid_txs == total  # no VALID transaction that belongs to no row


def _tool(name: str) -> str:
    return str(_bin_dir() / name)


def _as_server_user() -> dict[str, Any]:
    """subprocess options that run a server-side tool as the embedded cluster's owner when we are root."""
    return {"user": SYSTEM_USER} if os.geteuid() == 0 else {}


def _start(procs: list[Any], tmp_path: Path, name: str, settings: dict[str, str]) -> ServiceProc:
    svc = ServiceProc(name, tmp_path, settings)
    procs.append(svc)
    return svc.start()


def test_restore_from_a_dump_taken_mid_run(wallet: Path, tmp_path: Path, procs: list[Any]) -> None:
    # Show 1: the database restored from a pg_dump taken while the service ran, the service started
    # again on it against the same ledger. Rows COMMITTED after the dump are PENDING or SUBMITTED
    # again, most with no tx id recorded: their derived tx ids are the ones on the ledger.
    pg = EmbeddedPostgres(tmp_path / "pg", port=free_port(), fsync=False)
    pg.start()
    try:
        _migrate(pg.url)
        emu = EmulatorProc(wallet=wallet, workdir=tmp_path, extra=("--block-time", "0.5"))
        procs.append(emu)
        emu.start()
        svc = _start(procs, tmp_path, "svc", service_settings(pg.url, "public", wallet, emu))
        svc.wait_ready()
        total = enqueue_many(pg.url, "public", _work("rs", 150, 100), prefix="r")
        wait_for(lambda: counts(pg.url, "public")["COMMITTED"] >= total // 5, 90, 0.05, "a fifth committed")
        dump = tmp_path / "mid-run.dump"
        subprocess.run([_tool("pg_dump"), "--format=custom", "--file", str(dump), pg.url], check=True,
                       capture_output=True, timeout=120)
        wait_for(lambda: all_finished(pg.url, "public", total), 120, 0.2, "all finished before the restore")
        _exactly_once(pg.url, emu, total)
        assert svc.terminate(30) == 0

        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE restored")
        restored = pg.url_for("restored")
        subprocess.run([_tool("pg_restore"), "--dbname", restored, str(dump)], check=True,
                       capture_output=True, timeout=120)
        before = counts(restored, "public")
        assert before["COMMITTED"] < total  # the restore lost the later commits
        n_valid = len(emu.valid_txs())
        svc2 = _start(procs, tmp_path, "svc2", service_settings(restored, "public", wallet, emu))
        svc2.wait_ready()
        wait_for(lambda: all_finished(restored, "public", total), 120, 0.2, "all finished after the restore")
        _exactly_once(restored, emu, total)
        assert len(emu.valid_txs()) == n_valid  # nothing sent twice
    finally:
        for p in procs:
            if isinstance(p, ServiceProc):
                p.kill_group()
        pg.stop()


def test_failover_to_a_standby_that_lacks_the_last_commits(wallet: Path, tmp_path: Path,
                                                           procs: list[Any]) -> None:
    # Show 2: a real streaming standby (pg_basebackup -R), its replay paused and its WAL stream then cut
    # once it has the enqueued rows, so it provably lacks everything the service writes after; the primary
    # SIGKILLed mid-burst, the standby promoted, and the same supervisor finds the new primary through the
    # multi-host URL (target_session_attrs=read-write). Before derived tx ids the rows came back without
    # the nonces they had been sent with.
    repl = {"wal_level": "replica", "max_wal_senders": "4", "hot_standby": "on", "wal_keep_size": "256MB",
            "hot_standby_feedback": "on", "max_standby_streaming_delay": "-1"}
    primary = EmbeddedPostgres(tmp_path / "primary", port=free_port(), fsync=False, settings=repl)
    primary.start()
    standby: EmbeddedPostgres | None = None
    try:
        _migrate(primary.url)
        standby_dir = tmp_path / "standby"
        standby_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam(SYSTEM_USER)
            os.chown(standby_dir, pw.pw_uid, pw.pw_gid)
        res = subprocess.run([_tool("pg_basebackup"), "-D", str(standby_dir), "-R", "-X", "stream",
                              "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"],
                             check=False, capture_output=True, text=True, timeout=120, **_as_server_user())
        assert res.returncode == 0, res.stderr
        standby = EmbeddedPostgres(standby_dir, port=free_port(), fsync=False, settings=repl)
        standby.start()
        with psycopg.connect(standby.url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)

        url = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
               "?target_session_attrs=read-write")
        emu = EmulatorProc(wallet=wallet, workdir=tmp_path, extra=("--block-time", "0.5"))
        procs.append(emu)
        emu.start()
        total = enqueue_many(primary.url, "public", _work("fo", 150, 100), prefix="f")

        def standby_has_all_rows() -> bool:
            with psycopg.connect(standby.url, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM public.outbox_commands").fetchone()
            return bool(row and row[0] == total)

        # The standby holds the rows as the producers wrote them, and nothing the service writes later.
        wait_for(standby_has_all_rows, 60, 0.05, "the standby has every enqueued row")
        with psycopg.connect(standby.url, autocommit=True) as conn:
            # Cut the WAL stream first (a paused startup process would not apply the new conninfo, and
            # promotion replays whatever was received), then pause replay.
            conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
            conn.execute("SELECT pg_reload_conf()")
            wait_for(lambda: not conn.execute("SELECT 1 FROM pg_stat_wal_receiver").fetchall(), 30, 0.05,
                     "the standby's WAL receiver stopped")
            conn.execute("SELECT pg_wal_replay_pause()")
        svc = _start(procs, tmp_path, "svc", service_settings(url, "public", wallet, emu))
        svc.wait_ready()
        wait_for(lambda: counts(primary.url, "public")["COMMITTED"] >= total // 3, 90, 0.05,
                 "a third committed on the primary (none of it on the standby)")
        at_kill = counts(primary.url, "public")["COMMITTED"]
        primary.kill()  # mid-burst: rows in flight, the standby lacks the commits since its pause
        with psycopg.connect(standby.url, autocommit=True) as conn:
            conn.execute("SELECT pg_promote(true, 60)")
        lost = at_kill - counts(standby.url, "public")["COMMITTED"]
        assert lost > 0, "the promoted standby lacks commits the primary had acknowledged"
        wait_for(lambda: all_finished(standby.url, "public", total), 180, 0.2,
                 "all finished on the new primary")
        _exactly_once(standby.url, emu, total)
        assert svc.proc is not None and svc.proc.poll() is None  # the same supervisor reconnected
    finally:
        for p in procs:
            if isinstance(p, ServiceProc):
                p.kill_group()
        if standby is not None:
            standby.stop()
        primary.stop()
