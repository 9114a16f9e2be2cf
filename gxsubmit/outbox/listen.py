"""Wake-ups: LISTEN for the outbox's insert notifications on a connection of their own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from gxsubmit.dbroute import CONNECT_ARGS
from gxsubmit.outbox.queries import _compose

#: NOTIFY payloads of wake-up probes start with this (no schema name can: it is not an identifier).
PROBE_PREFIX = "~probe:"


class OutboxListener:
    """LISTEN on a dedicated autocommit connection; ``wait`` returns early when a row is inserted.

    Payloads are ``<schema>:<command_type>`` (migration 0003). Given ``schema`` and ``types``, only those
    wake the waiter: inserts of other identities' types, or into other schemas on the same server, would
    each cost it an empty claim. A payload without ``:`` (the trigger before 0003) always wakes it.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], wanted: frozenset[str] | None = None) -> None:
        self._conn = conn
        self._wanted = wanted
        self._probes: set[str] = set()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        connect_timeout: float = 5.0,
        schema: str | None = None,
        types: Sequence[str] | None = None,
    ) -> OutboxListener:
        conn = await psycopg.AsyncConnection.connect(
            url,
            autocommit=True,
            connect_timeout=max(2, round(connect_timeout)),
            application_name="gxsubmit:listen",
            **CONNECT_ARGS,
        )
        try:
            await conn.execute(_compose("listen", "public"))
        except BaseException:
            await conn.close()
            raise
        wanted = None if schema is None or types is None else frozenset(f"{schema}:{t}" for t in types)
        return cls(conn, wanted)

    def _wakes(self, payload: str) -> bool:
        if payload.startswith(PROBE_PREFIX):
            self._probes.add(payload)
            return False
        return self._wanted is None or payload in self._wanted or ":" not in payload

    async def probe(self, send: Callable[[str], Awaitable[Any]], timeout: float) -> tuple[bool, bool]:  # noqa: ASYNC109
        """Do notifications reach this connection? ``send(payload)`` NOTIFYs from another connection.

        Behind a transaction pooler the LISTEN ran on a server connection this client no longer holds,
        so nothing arrives. Returns (arrived, woken): ``woken`` if a real wake-up came meanwhile.
        """
        payload = PROBE_PREFIX + uuid.uuid4().hex
        await send(payload)
        deadline = time.monotonic() + max(0.0, timeout)
        woken = False
        while payload not in self._probes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            async for n in self._conn.notifies(timeout=left, stop_after=1):
                woken = self._wakes(n.payload) or woken
        arrived = payload in self._probes
        self._probes.clear()
        return arrived, woken

    async def unlisten(self) -> None:
        """Best effort: do not leave a pooled server connection listening for nobody."""
        await self._conn.execute(_compose("unlisten", "public"))

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109 - the contract's signature
        """Wait up to ``timeout`` s; True if a NOTIFY for us arrived. Drains queued ones so a burst of
        inserts wakes the worker once. Raises ``psycopg.OperationalError`` if the connection died.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        got = False
        while not got:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # One generator at a time on the connection: drain only after this one has finished.
            async for n in self._conn.notifies(timeout=left, stop_after=1):
                got = got or self._wakes(n.payload)  # a packet may hold several
        async for _ in self._conn.notifies(timeout=0.0):
            pass
        return True

    @property
    def broken(self) -> bool:
        return self._conn.closed or self._conn.broken

    async def close(self) -> None:
        await self._conn.close()

