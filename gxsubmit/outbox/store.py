"""The store: every state change of a command row, on one connection per worker process.

Every completion is fenced by the row's lease token, so a worker that lost its lease cannot overwrite
a row another worker now holds.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from gxsubmit.outbox.codec import _claimed, _decode_payloads
from gxsubmit.outbox.housekeeping import StoreHousekeeping
from gxsubmit.outbox.migrations import SchemaNotMigrated, _migrations, latest_version, schema_version
from gxsubmit.outbox.queries import _compose
from gxsubmit.outbox.records import (
    ERROR_CODE_MAX_BYTES,
    ClaimedCommand,
    Committed,
    SubmittedTx,
    TxRecord,
    truncate_error,
)

MAX_CLAIM = 1000  # rows per claim statement; the claim's LIMIT is a literal, so few distinct plans

_BY_SEQ = operator.attrgetter("seq")


def _pairs(items: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> dict[str, list[uuid.UUID]]:
    return {"ids": [i for i, _ in items], "tokens": [t for _, t in items]}


def _ended(id: uuid.UUID, token: uuid.UUID, error_code: str, error: str) -> dict[str, Any]:
    """The parameters every try that ends in an error writes: the fenced row and the error, cut to size."""
    return {"id": id, "token": token, "error_code": truncate_error(error_code, ERROR_CODE_MAX_BYTES),
            "error": truncate_error(error)}


def _arrays(items: Sequence[Any], **columns: str) -> dict[str, list[Any]]:
    """The array parameters of a batched statement: ``param="attribute"`` read from every item."""
    return {param: list(map(operator.attrgetter(attr), items)) for param, attr in columns.items()}


class OutboxStore(StoreHousekeeping):
    """The store of one worker process: claims, leases and every fenced state change of a row, on
    :class:`~gxsubmit.outbox.connection.StoreConnection`'s one connection (see there for concurrency);
    the statements of the supervisor and the admin commands are in :class:`StoreHousekeeping`.
    """

    async def _fenced(self, name: str, items: Sequence[Any], params: dict[str, Any]) -> set[uuid.UUID]:
        """A batched update of ``items`` fenced by each row's lease token: the ids whose lease held
        (nothing to send for no items)."""
        return await self._held(name, params) if items else set()

    @classmethod
    async def connect(
        cls, url: str, *, schema: str, worker_id: str, connect_timeout: float = 5.0
    ) -> OutboxStore:
        """Open the connection and check the schema is migrated (raises SchemaNotMigrated if not)."""
        store = cls(url, schema=schema, worker_id=worker_id, connect_timeout=connect_timeout)
        conn = await store._get()
        version = await schema_version(conn, schema)
        if version is None:
            await store.close()
            raise SchemaNotMigrated(f"schema {schema!r} has no outbox table; run 'gxsubmit migrate'")
        if version < latest_version():
            # The statements of this release use what its migrations add (e.g. 0004's column): say so
            # once here instead of failing each claim.
            await store.close()
            raise SchemaNotMigrated(f"schema {schema!r} is at version {version}, this release needs "
                                    f"{latest_version()}; run 'gxsubmit migrate'")
        # Numbers are reserved per change and may land out of order (0009 before 0008): a schema at the
        # highest version can still lack a lower one.
        cur = await conn.execute(_compose("applied_versions", schema))
        applied = {int(r[0]) for r in await cur.fetchall()}
        missing = [v for v, _, _ in _migrations() if v not in applied]
        if missing:
            await store.close()
            lacking = ", ".join(map(str, missing))
            raise SchemaNotMigrated(f"schema {schema!r} lacks migration {lacking} of this release; "
                                    "run 'gxsubmit migrate'")
        return store

    def _claim_query(self, limit: int, conn: psycopg.AsyncConnection[Any]) -> bytes:
        q = self._claim_q.get(limit)
        if q is None:
            q = self._claim_q[limit] = _compose("claim", self.schema, limit=limit).as_bytes(conn)
        return q

    async def claim(self, types: Sequence[str], limit: int, lease_s: float, *,
                    max_payload_bytes: int | None = None) -> list[ClaimedCommand]:
        """Lease up to ``limit`` due rows of ``types`` (expired leases first, then FIFO by seq).

        Each payload is decoded alone if need be: one that cannot be (or is over ``max_payload_bytes``)
        is a :class:`~gxsubmit.rowdecode.BadPayload` in its row, and the other rows are unaffected.
        Rows set to run alone after crashes are not taken here (see :meth:`claim_suspect`).
        """
        if not types or limit <= 0:
            return []
        limit = min(limit, MAX_CLAIM)
        conn = await self._get()
        cur = await conn.execute(
            self._claim_query(limit, conn),
            {"types": list(types), "worker_id": self.worker_id, "lease_s": float(lease_s)},
            binary=True,
        )
        rows = await cur.fetchall()  # binary: cheaper uuid and timestamp decoding, bytea as is
        if not rows:
            return []
        # the query returns payload::text
        payloads = _decode_payloads([r[6] for r in rows], max_payload_bytes)
        out = [_claimed(r, p) for r, p in zip(rows, payloads, strict=True)]
        out.sort(key=_BY_SEQ)
        return out

    async def claim_suspect(self, types: Sequence[str], lease_s: float, *,
                            max_payload_bytes: int | None = None) -> list[ClaimedCommand]:
        """Lease one due row set to run alone after its claims ended in crashes (migration 0009)."""
        if not types:
            return []
        rows = await self._rows("claim_suspect", {
            "types": list(types), "worker_id": self.worker_id, "lease_s": float(lease_s)})
        payloads = _decode_payloads([r[6] for r in rows], max_payload_bytes)
        return [_claimed(r, p) for r, p in zip(rows, payloads, strict=True)]

    async def next_takeover(self, types: Sequence[str]) -> float | None:
        """Seconds until another holder's earliest lease on a row of ``types`` runs out (None: none)."""
        rows = await self._rows("next_takeover", {"types": list(types), "worker_id": self.worker_id})
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def suspects_due(self, types: Sequence[str]) -> bool:
        """Whether a row of ``types`` waits to be claimed alone (:meth:`claim_suspect`)."""
        rows = await self._rows("suspects_due", {"types": list(types)})
        return bool(rows and rows[0][0])

    async def renew(self, leases: Sequence[tuple[uuid.UUID, uuid.UUID]], lease_s: float) -> set[uuid.UUID]:
        """Extend the leases still held; return their ids (the others were lost)."""
        return await self._fenced("renew", leases, {**_pairs(leases), "lease_s": float(lease_s)})

    async def record_tx_many(self, items: Sequence[TxRecord]) -> set[uuid.UUID]:
        """Store each row's nonce and tx id (fenced by its lease); returns the ids whose lease held.

        Not the worker's path (its one write-ahead is :meth:`mark_submitted_tx`): kept for
        ``bench/legacy_outbox.py``, which replays the original worker's two writes (this, then
        :meth:`mark_submitted`), and for the tests of a row that holds a stored nonce.
        """
        return await self._fenced("record_tx_many", items, _arrays(
            items, ids="id", tokens="token", nonces="nonce", tx_ids="tx_id", fps="creator_fingerprint",
            not_afters="creator_not_after"))

    async def mark_submitted(self, items: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> set[uuid.UUID]:
        """SUBMITTED without writing a tx id. Not the worker's path (:meth:`mark_submitted_tx` is): kept
        for the benchmarks that replay the original worker (``bench/original_worker.py``,
        ``bench/legacy_outbox.py``), and for tests that need a SUBMITTED row."""
        return await self._fenced("mark_submitted", items, _pairs(items))

    async def mark_submitted_tx(self, items: Sequence[SubmittedTx]) -> set[uuid.UUID]:
        """SUBMITTED, with the tx id, nonce generation and creator of the envelope (before Submit)."""
        return await self._fenced("mark_submitted_tx", items, _arrays(
            items, ids="id", tokens="token", tx_ids="tx_id", gens="generation", fps="creator_fingerprint",
            not_afters="creator_not_after", nonces="nonce"))

    async def txid_key(self) -> bytes:
        """The schema's key for derived nonces (migration 0008)."""
        rows = await self._rows("txid_key", {})
        if not rows:
            raise SchemaNotMigrated(f"schema {self.schema!r} has no tx id key; run 'gxsubmit migrate'")
        return bytes(rows[0][0])

    async def record_creator(self, fingerprint: str, creator: bytes) -> None:
        """Remember a serialized creator by its fingerprint (once; before rows name it)."""
        conn = await self._get()
        await conn.execute(self._q["record_creator"], {"fingerprint": fingerprint, "creator": creator})

    async def find_creator(self, fingerprint: str) -> bytes | None:
        """The serialized creator a row's creator_fingerprint names, if recorded (0008)."""
        rows = await self._rows("find_creator", {"fingerprint": fingerprint})
        return bytes(rows[0][0]) if rows else None

    async def mark_committed(self, items: Sequence[Committed]) -> set[uuid.UUID]:
        """COMMITTED with the block and validation code, and the next row of each order key woken."""
        return await self._fenced("mark_committed", items, _arrays(
            items, ids="id", tokens="token", tx_ids="tx_id", blocks="block", codes="validation_code"))

    async def retry_later(
        self,
        id: uuid.UUID,
        token: uuid.UUID,
        *,
        error_code: str,
        error: str,
        delay_s: float,
        burn_nonce: bool = False,
        counts: bool = True,
        generation: int = 0,
    ) -> bool:
        """Back to PENDING after ``delay_s``. Keeps the nonce (same tx id next time) unless burnt.
        ``counts=False`` gives the claim's counted attempt back (an outage must not use up attempts).
        ``generation``: the nonce generation of the next attempt (never lowered)."""
        params = {**_ended(id, token, error_code, error), "delay_s": max(0.0, float(delay_s)),
                  "burn": burn_nonce, "counts": counts, "generation": generation}
        return bool(await self._rows("retry_later", params))

    async def mark_failed(
        self,
        id: uuid.UUID,
        token: uuid.UUID,
        *,
        error_code: str,
        error: str,
        tx_id: str | None = None,
        validation_code: str | None = None,
    ) -> bool:
        """Terminal failure (dead letter). ``validation_code`` only for a definite commit outcome."""
        params = {**_ended(id, token, error_code, error), "tx_id": tx_id, "validation_code": validation_code}
        return bool(await self._rows("mark_failed", params))

    async def release(self, leases: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> int:
        """Hand rows back at shutdown: claimable at once, and the attempt is not counted."""
        if not leases:
            return 0
        rows = await self._rows("release", _pairs(leases))
        return int(rows[0][0])

    async def notify_probe(self, payload: str) -> None:
        """NOTIFY a wake-up probe (see :meth:`OutboxListener.probe`)."""
        await self._rows("notify_probe", {"payload": payload})
