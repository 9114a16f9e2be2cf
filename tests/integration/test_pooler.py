"""Through a real PgBouncer in transaction mode, the pooler most Kubernetes PostgreSQL set-ups use."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbutil import drop_schema, new_schema_name
from pooler import pgbouncer_for, pooled_url
from waiting import async_wait_for

from gxsubmit.config import Config
from gxsubmit.dbroute import CONNECT_ARGS, pool_mode
from gxsubmit.exitcodes import RET_OK
from gxsubmit.outbox import OutboxListener, OutboxStore, enqueue, latest_version, migrate
from gxsubmit.pgbouncer import PgBouncer
from gxsubmit.wakeups import Wakeups

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def bouncer(pg_url: str) -> Iterator[PgBouncer]:
    with pgbouncer_for(pg_url) as b:
        yield b


def test_repeated_statements_from_several_connections_never_collide_on_prepared_names(
    bouncer: PgBouncer, pg_url: str, schema: str
) -> None:
    """psycopg prepares a statement after a few runs; a transaction pooler hands the next transaction to
    another server connection, where that name may already exist (DuplicatePreparedStatement) or not."""
    url = pooled_url(bouncer, pg_url)

    async def go() -> None:
        import psycopg

        stores = [await OutboxStore.connect(url, schema=schema, worker_id=f"w{i}") for i in range(3)]
        try:
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as prod:
                for i in range(30):
                    await enqueue(prod, command_type="CREATE_USER", tenant_id="t", service="s",
                                  request_id=f"r{i}", payload={"i": i}, schema=schema)
            for _ in range(12):  # well past psycopg's prepare threshold (5) on each connection
                await asyncio.gather(*(st.claim(["CREATE_USER"], 1, 30.0) for st in stores))
                await asyncio.gather(*(st.stats() for st in stores))
        finally:
            for st in stores:
                await st.close()

    asyncio.run(go())


def test_a_pooled_connection_is_told_from_a_direct_one(bouncer: PgBouncer, pg_url: str, schema: str) -> None:
    """And gets only the settings PgBouncer replays per client (one application_name for all: the
    pooler would otherwise SET it before every transaction that changes hands)."""
    async def go() -> list[tuple[bool, str, str]]:
        out = []
        for url in (pg_url, pooled_url(bouncer, pg_url)):
            store = await OutboxStore.connect(url, schema=schema, worker_id="w1")
            try:
                conn = await store._get()
                cur = await conn.execute("SELECT current_setting('application_name'), "
                                         "current_setting('statement_timeout')")
                row = await cur.fetchone()
                assert row is not None
                out.append((store.pooled, str(row[0]), str(row[1])))
            finally:
                await store.close()
        return out

    direct, pooled = asyncio.run(go())
    assert direct == (False, "gxsubmit:w1", "30s")
    assert pooled[:2] == (True, "gxsubmit")


def test_notify_probe_arrives_directly_but_not_through_a_transaction_pooler(
    bouncer: PgBouncer, pg_url: str, schema: str
) -> None:
    async def probe(listen_url: str) -> bool:
        store = await OutboxStore.connect(pooled_url(bouncer, pg_url), schema=schema, worker_id="p")
        notifier = await OutboxListener.connect(listen_url, schema=schema, types=["CREATE_USER"])
        try:
            arrived, _ = await notifier.probe(store.notify_probe, 5.0)
            return arrived
        finally:
            await notifier.close()
            await store.close()

    assert asyncio.run(probe(pg_url)) is True
    assert asyncio.run(probe(pooled_url(bouncer, pg_url))) is False


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_pool_mode_is_recognised(pg_url: str, mode: str) -> None:
    with pgbouncer_for(pg_url, pool_mode=mode) as b:
        info = asyncio.run(pool_mode(pooled_url(b, pg_url), connect_timeout=5.0))
    assert info.mode == mode, info.detail


def test_concurrent_migrations_through_the_pooler(bouncer: PgBouncer, pg_url: str) -> None:
    """The migration lock is transaction-scoped: a session-level advisory lock would stay on whichever
    server connection took it."""
    name = new_schema_name()
    url = pooled_url(bouncer, pg_url)

    async def one() -> int:
        import psycopg

        async with await psycopg.AsyncConnection.connect(url, autocommit=True, **CONNECT_ARGS) as conn:
            return await migrate(conn, name)

    async def both() -> list[int]:
        return list(await asyncio.gather(one(), one(), one()))

    try:
        assert asyncio.run(both()) == [latest_version()] * 3
    finally:
        drop_schema(pg_url, name)


def test_check_reports_the_pooler_its_mode_and_notifications(
    bouncer: PgBouncer, pg_url: str, schema: str, wallet: Path
) -> None:
    def check(**settings: Any) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
        env.update(Config(**{"insecure": True, "connect_timeout": 3.0, "wallet": wallet, "schema": schema,
                             **settings}).to_env())
        return subprocess.run([sys.executable, "-m", "gxsubmit", "check", "--skip-gateway"], env=env,
                              capture_output=True, text=True, timeout=120)

    pooled = check(database_url=pooled_url(bouncer, pg_url))
    assert pooled.returncode == RET_OK, pooled.stdout + pooled.stderr
    assert "ok   database route: through a pooler or proxy (no TLS), pool mode transaction" in pooled.stdout
    assert "a NOTIFY does not reach the LISTEN connection (the database URL" in pooled.stdout
    with_listen = check(database_url=pooled_url(bouncer, pg_url), listen_url=pg_url)
    assert with_listen.returncode == RET_OK, with_listen.stdout + with_listen.stderr
    assert ("ok   notifications: a NOTIFY reaches the LISTEN connection (GXSUBMIT_LISTEN_URL)"
            in with_listen.stdout), with_listen.stdout
    direct = check(database_url=pg_url)
    assert "ok   database route: direct (no TLS)" in direct.stdout, direct.stdout
    assert "ok   notifications: a NOTIFY reaches the LISTEN connection (the database URL)" in direct.stdout


@pytest.mark.parametrize("direct_listen", [True, False])
def test_wakeups_listen_when_notify_arrives_and_poll_short_when_it_cannot(
    bouncer: PgBouncer, pg_url: str, schema: str, direct_listen: bool
) -> None:
    pooled = pooled_url(bouncer, pg_url)

    async def go() -> tuple[str, str | None, float, bool]:
        import psycopg

        store = await OutboxStore.connect(pooled, schema=schema, worker_id="w")
        wake, stop = asyncio.Event(), asyncio.Event()
        w = Wakeups(
            connect=lambda: OutboxListener.connect(pg_url if direct_listen else pooled, schema=schema,
                                             types=["CREATE_USER"]),
            send_probe=store.notify_probe, wake=wake, poll_interval=30.0, pooled_poll_interval=0.5)
        task = asyncio.create_task(w.run(stop))
        try:
            async def decided() -> bool:
                return w.mode != "unknown"

            await async_wait_for(decided, 60, what="the probe's verdict")
            if w.mode == "notify":  # then an insert wakes the worker
                wake.clear()
                async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as prod:
                    await enqueue(prod, command_type="CREATE_USER", payload={}, schema=schema)
                await asyncio.wait_for(wake.wait(), 30)
            return w.mode, w.warning, w.poll_interval, wake.is_set()
        finally:
            stop.set()
            await task
            await w.close()
            await store.close()

    mode, warning, interval, woken = asyncio.run(go())
    if direct_listen:
        assert (mode, warning, interval, woken) == ("notify", None, 30.0, True)
    else:
        # the switch itself wakes the claim loop, which may sit in a 30 s fallback wait
        assert (mode, interval, woken) == ("poll", 0.5, True)
        assert warning is not None and "GXSUBMIT_LISTEN_URL" in warning and "every 0.5s" in warning
