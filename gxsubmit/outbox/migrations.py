"""Schema migrations: ``gxsubmit/sql/NNNN_<name>.sql`` applied in order under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from gxsubmit.outbox.queries import _compose

_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaNotMigrated(RuntimeError):
    """The outbox table does not exist in the configured schema: run ``gxsubmit migrate``."""



@cache
def _migrations() -> tuple[tuple[int, str, str], ...]:
    found = []
    for entry in resources.files("gxsubmit").joinpath("sql").iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    # Numbers are reserved per change while several are developed at once (one may land before a lower
    # one), so a gap is allowed; a number used twice is not.
    if not versions or versions[0] != 1 or len(set(versions)) != len(versions):
        raise RuntimeError(f"migration files must be numbered from 0001, each number once, found {versions}")
    return tuple(found)


def latest_version() -> int:
    """The schema version this code ships (its highest migration number)."""
    return _migrations()[-1][0]


def _lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory lock key per schema (Python's hash() is salted per process)."""
    digest = hashlib.sha256(f"gxsubmit.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)



async def migrate(conn: psycopg.AsyncConnection[Any], schema: str = "public") -> int:
    """Apply missing migrations in one transaction under an advisory lock; return the schema version.

    Safe to run from several replicas at once: the second waits on the lock, then finds nothing to do.
    """
    async with conn.transaction():
        await conn.execute(_compose("lock_migrations", schema), {"key": _lock_key(schema)})
        cur = await conn.execute(_compose("schema_exists", schema), {"schema": schema})
        row = await cur.fetchone()
        if not (row and row[0]):
            await conn.execute(_compose("create_schema", schema))
        await conn.execute(_compose("create_version_table", schema))
        cur = await conn.execute(_compose("applied_versions", schema))
        applied = {r[0] for r in await cur.fetchall()}
        for version, name, text in _migrations():
            if version in applied:
                continue
            body = sql.SQL(text).format(schema=sql.Identifier(schema))
            await conn.execute(body)
            await conn.execute(_compose("record_version", schema), {"version": version, "name": name})
            applied.add(version)
        return int(max(applied))


async def schema_version(conn: psycopg.AsyncConnection[Any], schema: str = "public") -> int | None:
    """The applied version, or None when the schema has never been migrated."""
    cur = await conn.execute(
        _compose("table_exists", schema), {"schema": schema, "table": "gxsubmit_schema_version"}
    )
    row = await cur.fetchone()
    if not (row and row[0]):
        return None
    cur = await conn.execute(_compose("current_version", schema))
    row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None

