"""Database helpers for tests (imported by name; conftest modules are not importable reliably)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg import sql

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even while an event loop runs in this thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def migrate_schema(url: str, schema: str) -> int:
    """Create and migrate ``schema`` (sync wrapper around ``gxsubmit.outbox.migrate``)."""
    from gxsubmit.outbox import migrate

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await migrate(conn, schema)

    return run_sync(go())


def drop_schema(url: str, schema: str) -> None:
    assert schema.startswith("gxt_"), schema  # never drop anything we did not create
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def new_schema_name() -> str:
    return f"gxt_{uuid.uuid4().hex[:16]}"


def url_with_search_path(url: str, schema: str) -> str:
    """``url`` with ``options=-csearch_path=<schema>`` so unqualified SQL (psql, producers) lands there."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"
