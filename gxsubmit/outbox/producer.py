"""The producer side: ``enqueue`` a command inside the producer's own transaction."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gxsubmit.outbox.queries import _compose


async def enqueue(
    conn: psycopg.AsyncConnection[Any],
    *,
    command_type: str,
    payload: Any,
    request_id: str | None = None,
    tenant_id: str = "default",
    service: str = "cli",
    schema: str = "public",
    id: uuid.UUID | None = None,
    order_key: str | None = None,
) -> tuple[uuid.UUID, bool]:
    """Insert a command unless (tenant_id, request_id) exists; return (id, created).

    Runs in whatever transaction ``conn`` is in, so a producer can enqueue atomically with its own
    business change: if that transaction rolls back, no row remains. A missing ``request_id``
    defaults to the row id (no de-duplication). Commands with the same ``order_key`` (per tenant) are
    submitted one at a time in enqueue order (migration 0007); None means no order.
    """
    row_id = id if id is not None else uuid.uuid4()
    params = {
        "id": row_id,
        "tenant_id": tenant_id,
        "service": service,
        "command_type": command_type,
        "request_id": request_id if request_id is not None else str(row_id),
        "payload": Jsonb(payload),
        "order_key": order_key,
    }
    for _ in range(3):
        cur = await conn.execute(_compose("enqueue", schema), params)
        row = await cur.fetchone()
        if row is not None:
            return row[0], True
        cur = await conn.execute(_compose("find_request", schema), params)
        row = await cur.fetchone()
        if row is not None:
            return row[0], False
        # The conflicting row vanished between the two statements (its inserter rolled back): retry.
    raise RuntimeError(f"enqueue of request {params['request_id']!r} kept conflicting; giving up")
