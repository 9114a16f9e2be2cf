"""The supervisor's database watcher on its own thread against a real PostgreSQL: statistics and the
unroutable sweep, handing back rows of exited and crashed workers, and a database it cannot reach.
Its decisions alone (schedule, busy or idle, logging) are tests/unit/test_outbox_watcher_logic.py."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator, Sequence

import psycopg
import pytest
from dbutil import run_sync
from psycopg import sql
from waiting import wait_for

from gxsubmit.config import Config
from gxsubmit.outbox import OutboxStore, enqueue
from gxsubmit.supervisor.watcher import OutboxWatcher


def enqueue_rows(pg_url: str, schema: str, ctype: str, n: int) -> list[uuid.UUID]:
    async def add() -> list[uuid.UUID]:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return [(await enqueue(conn, command_type=ctype, payload={"i": i}, schema=schema))[0]
                    for i in range(n)]

    return run_sync(add())


def claim_as(pg_url: str, schema: str, owner: str, ctype: str, n: int) -> list[uuid.UUID]:
    """Rows leased by worker id ``owner`` (a worker of this host that then exits)."""
    async def claim() -> list[uuid.UUID]:
        store = await OutboxStore.connect(pg_url, schema=schema, worker_id=owner)
        try:
            return [c.id for c in await store.claim([ctype], n, 300.0)]
        finally:
            await store.close()

    return run_sync(claim())


def statuses(pg_url: str, schema: str, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str | None]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(sql.SQL("SELECT id, status, error_code FROM {} WHERE id = ANY(%s)").format(
            sql.Identifier(schema, "outbox_commands")), [list(ids)]).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture
def start_watcher() -> Iterator[Callable[..., OutboxWatcher]]:
    """``start(cfg, routed)`` -> a running watcher, stopped at the end of the test."""
    started: list[OutboxWatcher] = []

    def start(cfg: Config, routed: Sequence[str] = ("MINT",)) -> OutboxWatcher:
        w = OutboxWatcher(cfg, lambda: list(routed))
        w.start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def test_statistics_come_and_unrouted_pending_rows_fail(
    pg_url: str, schema: str, start_watcher: Callable[..., OutboxWatcher]
) -> None:
    enqueue_rows(pg_url, schema, "MINT", 2)
    odd = enqueue_rows(pg_url, schema, "NO_SUCH_TYPE", 3)
    w = start_watcher(Config(database_url=pg_url, schema=schema))
    wait_for(lambda: w.unroutable_failed == 3 and w.stats is not None, what="the first refresh")
    assert (w.ok, w.error) == (True, None)
    assert w.stats is not None and w.stats.failed_by_code == {"UNROUTABLE": 3}  # counted after the sweep
    assert w.stats.by_status["PENDING"] == 2
    assert set(statuses(pg_url, schema, odd).values()) == {("FAILED", "UNROUTABLE")}


def test_rows_of_exited_workers_come_back_and_crashed_ones_count(
    pg_url: str, schema: str, start_watcher: Callable[..., OutboxWatcher]
) -> None:
    enqueue_rows(pg_url, schema, "MINT", 4)
    exited = claim_as(pg_url, schema, "host:org1:101", "MINT", 2)
    crashed = claim_as(pg_url, schema, "host:org1:102", "MINT", 2)
    w = start_watcher(Config(database_url=pg_url, schema=schema))
    wait_for(lambda: w.ok, what="the watcher's connection")
    assert w.release(["host:org1:101"]).result(timeout=30) == 2
    assert set(statuses(pg_url, schema, exited).values()) == {("PENDING", None)}
    # A crash limit of 1: a row whose claim ended in its worker's crash is a dead letter at once.
    assert w.release(["host:org1:102"], crash_limit=1, identity="org1").result(timeout=30) == 2
    assert set(statuses(pg_url, schema, crashed).values()) == {("FAILED", "WORKER_CRASH")}
    assert w.release(["host:org1:999"]).result(timeout=30) == 0


def test_a_database_it_cannot_reach_is_reported_and_release_fails(
    schema: str, start_watcher: Callable[..., OutboxWatcher]
) -> None:
    with socket.socket() as held:  # bound, never listening: every connect is refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        cfg = Config(database_url=f"postgresql://postgres@127.0.0.1:{port}/none", schema=schema,
                     connect_timeout=2.0)
        w = start_watcher(cfg)
        wait_for(lambda: w.ok is False, what="the watcher to report the database unreachable")
        assert w.error and "refused" in w.error.lower() and w.stats is None
        with pytest.raises(psycopg.OperationalError):
            w.release(["host:org1:1"]).result(timeout=30)
