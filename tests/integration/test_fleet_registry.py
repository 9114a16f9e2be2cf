"""The fleet registry's statements against a real PostgreSQL: heartbeat, liveness, forgetting, the sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gxsubmit.catalog import Catalog, load_catalog
from gxsubmit.config import Config
from gxsubmit.fleet import FleetReporter, read_fleet

Conn = psycopg.AsyncConnection[Any]
RUNNING = {"org1-partner-api": {"state": "running", "db_ok": True, "gateway_ok": True, "in_flight": 2,
                                "committed": 3, "restarts": 0}}


@pytest.fixture
def older(tmp_path: Path) -> Catalog:
    path = tmp_path / "older.toml"
    path.write_text('extends = "default"\nremove = ["CREATE_USER"]\n')
    return load_catalog(path)


def reporter(pg_url: str, schema: str, worker_id: str, catalog: Catalog, *, grace: float = 0.0,
             host: str | None = None) -> FleetReporter:
    cfg = Config(database_url=pg_url, schema=schema, worker_id=worker_id, node_name=f"node-{worker_id}",
                 fleet_interval=1.0, unroutable_grace=grace)
    rep = FleetReporter(cfg, lambda: catalog, host=host or f"host-{worker_id}")
    rep.observe(RUNNING, True, None)
    return rep


async def pending(conn: Conn, schema: str, command_type: str, request_id: str) -> None:
    await conn.execute(sql.SQL("INSERT INTO {}.outbox_commands (service, command_type, request_id, payload) "
                               "VALUES ('t', %s, %s, '[]'::jsonb)").format(sql.Identifier(schema)),
                       (command_type, request_id))


async def status(conn: Conn, schema: str, request_id: str) -> tuple[str, str | None]:
    text = "SELECT status, error_code FROM {}.outbox_commands WHERE request_id = %s"
    cur = await conn.execute(sql.SQL(text).format(sql.Identifier(schema)), (request_id,))
    row = await cur.fetchone()
    assert row is not None
    return row[0], row[1]


async def age(conn: psycopg.AsyncConnection[Any], schema: str, column: str, where: str, value: str,
              seconds: float) -> None:
    table = "gxsubmit_replicas" if column == "heartbeat_at" else "outbox_commands"
    text = "UPDATE {}.{} SET {} = now() - make_interval(secs => %s) WHERE {} = %s"
    await conn.execute(sql.SQL(text).format(
        sql.Identifier(schema), sql.Identifier(table), sql.Identifier(column), sql.Identifier(where)),
        (seconds, value))


async def test_a_heartbeat_registers_the_replica_with_every_identity(
    pg_url: str, schema: str, conn: psycopg.AsyncConnection[Any]
) -> None:
    catalog = load_catalog(None)
    a = reporter(pg_url, schema, "a", catalog)
    await a.beat(conn)
    await a.beat(conn)  # a second beat rewrites the same row
    [row] = await read_fleet(conn, schema)
    assert (row.worker_id, row.node, row.host) == ("a", "node-a", "host-a")
    assert row.live and not row.stopped
    assert set(row.routed_types) == set(catalog.all_types())
    ident = row.identities["org1-partner-api"]
    assert ident["gateway"] and ident["database"] and ident["in_flight"] == 2 and ident["error_code"] is None
    assert row.stale_after_s == 3.0 and row.heartbeat_age_s < 3.0


async def test_the_sweep_spares_a_type_another_live_replica_routes_and_then_waits_the_grace(
    pg_url: str, schema: str, conn: psycopg.AsyncConnection[Any], older: Catalog
) -> None:
    a = reporter(pg_url, schema, "a", older)  # lacks CREATE_USER
    b = reporter(pg_url, schema, "b", load_catalog(None))
    await a.beat(conn)
    await b.beat(conn)
    await pending(conn, schema, "CREATE_USER", "known-to-b")
    await pending(conn, schema, "NO_SUCH_TYPE", "known-to-none")
    assert await a.sweep(conn, older.all_types()) == 1  # only the type no replica routes
    assert await status(conn, schema, "known-to-b") == ("PENDING", None)
    assert await status(conn, schema, "known-to-none") == ("FAILED", "UNROUTABLE")

    await b.stop(conn)  # b leaves gracefully: no longer live, its routes count for the grace period
    [_, row_b] = await read_fleet(conn, schema)
    assert row_b.stopped and not row_b.live
    patient = reporter(pg_url, schema, "a", older, grace=60.0)
    assert await patient.sweep(conn, older.all_types()) == 0
    assert await status(conn, schema, "known-to-b") == ("PENDING", None)
    await age(conn, schema, "heartbeat_at", "worker_id", "b", 61)  # b stopped 61 s ago
    await age(conn, schema, "updated_at", "request_id", "known-to-b", 61)
    assert await patient.sweep(conn, older.all_types()) == 1
    assert await status(conn, schema, "known-to-b") == ("FAILED", "UNROUTABLE")


async def test_a_row_no_replica_ever_routed_waits_the_grace_period_too(
    pg_url: str, schema: str, conn: psycopg.AsyncConnection[Any], older: Catalog
) -> None:
    a = reporter(pg_url, schema, "a", older, grace=60.0)
    await a.beat(conn)
    await pending(conn, schema, "CREATE_USER", "new-type")  # its replica may not have registered yet
    assert await a.sweep(conn, older.all_types()) == 0
    await age(conn, schema, "updated_at", "request_id", "new-type", 61)
    assert await a.sweep(conn, older.all_types()) == 1


async def test_a_silent_replica_goes_stale_then_is_forgotten_by_the_others(
    pg_url: str, schema: str, conn: psycopg.AsyncConnection[Any], older: Catalog
) -> None:
    a = reporter(pg_url, schema, "a", older)
    b = reporter(pg_url, schema, "b", load_catalog(None))
    await a.beat(conn)
    await b.beat(conn)
    await age(conn, schema, "heartbeat_at", "worker_id", "b", 4)  # stale after 3 intervals of 1 s
    rows = {r.worker_id: r for r in await read_fleet(conn, schema)}
    assert rows["a"].live and not rows["b"].live and not rows["b"].stopped
    # a crashed replica's types stop counting once it is stale (grace 0 here)
    await pending(conn, schema, "CREATE_USER", "only-b-knew")
    assert await a.sweep(conn, older.all_types()) == 1
    await age(conn, schema, "heartbeat_at", "worker_id", "b", 2 * 3600)
    await a.beat(conn)
    assert [r.worker_id for r in await read_fleet(conn, schema)] == ["a"]
    assert a.forgotten == 1


async def test_the_same_worker_id_live_on_another_host_is_reported(
    pg_url: str, schema: str, conn: psycopg.AsyncConnection[Any], older: Catalog
) -> None:
    first = reporter(pg_url, schema, "dup", older, host="host-1")
    second = reporter(pg_url, schema, "dup", older, host="host-2")
    await first.beat(conn)
    await first.beat(conn)
    assert not first._conflict_logged
    await second.beat(conn)
    assert second._conflict_logged
