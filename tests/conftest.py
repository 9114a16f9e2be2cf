"""Database fixtures shared by every test that needs PostgreSQL.

``pg_url`` is the server (``GXSUBMIT_TEST_DATABASE_URL`` or an embedded one started for the session).
``schema`` is a fresh, migrated, randomly named schema per test, dropped afterwards, so tests running
at the same time (several people share the machine server) never see each other's rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql

from gxsubmit.pgembed import EmbeddedPostgres

T = TypeVar("T")

TEST_URL_ENV = "GXSUBMIT_TEST_DATABASE_URL"


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


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env_url = os.environ.get(TEST_URL_ENV)
    if env_url:
        yield env_url
        return
    pg = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pgsession")) / "data", fsync=False)
    pg.start()
    try:
        yield pg.url
    finally:
        pg.stop()


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A migrated schema of its own for this test (usable from sync and async tests)."""
    name = new_schema_name()
    migrate_schema(pg_url, name)
    try:
        yield name
    finally:
        drop_schema(pg_url, name)


@pytest.fixture
def db_url_with_schema(pg_url: str, schema: str) -> str:
    return url_with_search_path(pg_url, schema)
