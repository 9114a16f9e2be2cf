"""Through a real PgBouncer in transaction mode, the pooler most Kubernetes PostgreSQL set-ups use."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pooler import pgbouncer_for, pooled_url

from gxsubmit.outbox import OutboxStore, enqueue
from gxsubmit.pgbouncer import PgBouncer

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
