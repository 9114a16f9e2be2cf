"""Migrations: idempotent, safe to run concurrently, additive, schema-scoped."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from dbutil import drop_schema, new_schema_name
from psycopg import sql

from gxsubmit.outbox import (
    OutboxStore,
    SchemaNotMigrated,
    _migrations,
    latest_version,
    migrate,
    schema_version,
)


async def _migrate(url: str, schema: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await migrate(conn, schema)


async def test_migrate_is_idempotent_and_reports_the_version(pg_url: str, schema: str) -> None:
    assert await _migrate(pg_url, schema) == latest_version() >= 1
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        assert await schema_version(conn, schema) == latest_version()
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.gxsubmit_schema_version").format(sql.Identifier(schema))
        )
        assert (await cur.fetchone()) == (len(_migrations()),)  # one row per migration file


async def test_concurrent_migrations_from_several_replicas(pg_url: str) -> None:
    name = new_schema_name()
    try:
        versions = await asyncio.gather(*(_migrate(pg_url, name) for _ in range(5)))
        assert versions == [latest_version()] * 5
    finally:
        drop_schema(pg_url, name)


async def test_a_store_refuses_a_schema_older_than_its_release(pg_url: str, schema: str) -> None:
    # A new release rolled out before its migration ran: one clear error (the worker retries it, and
    # /readyz shows it) instead of a failing claim statement.
    await _migrate(pg_url, schema)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("DELETE FROM {}.gxsubmit_schema_version WHERE version = %s").format(
            sql.Identifier(schema)), [latest_version()])
    with pytest.raises(SchemaNotMigrated) as caught:
        await OutboxStore.connect(pg_url, schema=schema, worker_id="w")
    previous = _migrations()[-2][0]  # the version below the latest (numbers may have a reserved gap)
    assert str(caught.value) == (f"schema {schema!r} is at version {previous}, this release "
                                 f"needs {latest_version()}; run 'gxsubmit migrate'")
    assert await _migrate(pg_url, schema) == latest_version()  # the missing step is re-applied (idempotent)
    await (await OutboxStore.connect(pg_url, schema=schema, worker_id="w")).close()


async def test_a_store_refuses_a_schema_that_lacks_a_lower_migration(pg_url: str, schema: str) -> None:
    # Numbers are reserved per change, so a schema can be at the highest version without a lower one
    # (0009 applied by a release that had no 0008): named, instead of a claim that fails on a column.
    await _migrate(pg_url, schema)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("DELETE FROM {}.gxsubmit_schema_version WHERE version = 8").format(
            sql.Identifier(schema)))
    with pytest.raises(SchemaNotMigrated) as caught:
        await OutboxStore.connect(pg_url, schema=schema, worker_id="w")
    assert str(caught.value) == f"schema {schema!r} lacks migration 8 of this release; run 'gxsubmit migrate'"
    assert await _migrate(pg_url, schema) == latest_version()
    await (await OutboxStore.connect(pg_url, schema=schema, worker_id="w")).close()


async def test_unmigrated_schema_has_no_version(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        assert await schema_version(conn, new_schema_name()) is None


async def test_table_constraints(pg_url: str, schema: str) -> None:
    t = sql.Identifier(schema, "outbox_commands")
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (service, command_type, request_id, payload, status) "
                    "VALUES ('s', 'MINT', 'r', '1', 'LOCKED')"
                ).format(t)
            )
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (service, command_type, request_id, payload) "
                "VALUES ('s', 'ANY_NEW_TYPE', 'r', '1')"
            ).format(t)  # text, not an enum
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (service, command_type, request_id, payload) "
                    "VALUES ('s', 'MINT', 'r', '1')"
                ).format(t)
            )
        cur = await conn.execute(sql.SQL("SELECT status, attempts, tenant_id, seq FROM {}").format(t))
        row: Any = await cur.fetchone()
        assert row[:3] == ("PENDING", 0, "default") and row[3] >= 1


async def test_schema_names_are_quoted(pg_url: str) -> None:
    odd = "gxt_" + new_schema_name()[4:] + ' "Odd"; x'
    try:
        assert await _migrate(pg_url, odd) == latest_version()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(odd)))


async def test_0006_starts_unfinished_rows_at_their_attempts(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An upgrade must not give a row more tries than the old rule (attempts) left it.
    import gxsubmit.outbox.migrations as outbox  # migrate() reads _migrations here

    every = outbox._migrations()
    name = new_schema_name()
    try:
        monkeypatch.setattr(outbox, "_migrations", lambda: every[:5])
        assert await _migrate(pg_url, name) == 5
        t = sql.Identifier(name, "outbox_commands")
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            for rid, status, attempts in (("p", "PENDING", 4), ("c", "CLAIMED", 2), ("s", "SUBMITTED", 7),
                                          ("d", "COMMITTED", 3), ("f", "FAILED", 10)):
                await conn.execute(sql.SQL(
                    "INSERT INTO {} (service, command_type, request_id, payload, status, attempts) "
                    "VALUES ('s', 'MINT', %s, '{{}}', %s, %s)").format(t), [rid, status, attempts])
            monkeypatch.setattr(outbox, "_migrations", lambda: every)
            assert await _migrate(pg_url, name) == every[-1][0] >= 6
            cur = await conn.execute(sql.SQL("SELECT request_id, counted_attempts FROM {}").format(t))
            assert dict(await cur.fetchall()) == {"p": 4, "c": 2, "s": 7, "d": 0, "f": 0}
    finally:
        drop_schema(pg_url, name)
