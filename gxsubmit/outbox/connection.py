"""The store's connection: opened per worker process, set up for its schema, replaced when it breaks."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from gxsubmit.dbroute import CONNECT_ARGS, behind_proxy
from gxsubmit.outbox.queries import _compose, _queries


def _ignore_notify(_n: psycopg.Notify) -> None:
    return None


class StoreConnection:
    """One autocommit connection used by one worker process. Methods are safe to call concurrently
    from several tasks (psycopg serialises them on the connection). A broken connection is replaced
    on the next call; the call that saw it break raises ``psycopg.OperationalError``.
    """

    def __init__(self, url: str, *, schema: str, worker_id: str, connect_timeout: float) -> None:
        self._url = url
        self.schema = schema
        self.worker_id = worker_id
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._reconnect_lock = asyncio.Lock()
        self._q: dict[str, bytes] = {}
        self._claim_q: dict[int, bytes] = {}
        #: the connection goes through a pooler or proxy (session settings would not stick)
        self.pooled = False

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @property
    def tls(self) -> bool:
        """The current connection is encrypted (to the server, or to the pooler in front of it)."""
        conn = self._conn
        return bool(conn is not None and not conn.closed and conn.pgconn.ssl_in_use)

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(2, round(self._connect_timeout)),
            application_name=f"gxsubmit:{self.worker_id}"[:63],
            **CONNECT_ARGS,
        )
        # A server connection a transaction pooler shares may still LISTEN for an earlier client: drop
        # what arrives here (psycopg would keep it in a backlog that nothing reads).
        conn.add_notify_handler(_ignore_notify)
        try:
            # Through a pooler a SET lands on whichever server connection runs it and stays there: only
            # what PgBouncer tracks per client and replays is set then (queries.sql session_pooled).
            self.pooled = await behind_proxy(conn)
            await conn.execute(_compose("session_pooled" if self.pooled else "session_setup", self.schema))
        except BaseException:
            await conn.close()
            raise
        if not self._q:
            self._q = {
                name: _compose(name, self.schema).as_bytes(conn) for name in _queries() if name != "claim"
            }
        return conn

    async def _get(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        async with self._reconnect_lock:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    await conn.close()
                self._conn = None
                conn = self._conn = await self._open()
            return conn

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The store's connection (reopened if broken), for statements of other modules (gxsubmit.fleet)."""
        return await self._get()

    async def _rows(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        conn = await self._get()
        cur = await conn.execute(self._q[name], params)
        return await cur.fetchall()

    async def ping(self) -> None:
        """One round trip that touches nothing: the worker's idle check that the link still answers."""
        await self._rows("ping", {})

    async def _held(self, name: str, params: dict[str, Any]) -> set[uuid.UUID]:
        """Run a fenced batch update; the ids of ``params["ids"]`` whose lease held.

        The statement sends the updated ids back only when some lease was lost (see queries.sql). Binary
        results and the %b array parameters (queries.sql) spare psycopg's text array quoting and parsing.
        """
        conn = await self._get()
        cur = await conn.execute(self._q[name], params, binary=True)
        row = await cur.fetchone()
        held = row[0] if row is not None else None
        return set(params["ids"]) if held is None else set(held)
