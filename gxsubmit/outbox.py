"""The outbox store: schema migrations, producer enqueue, and every state change of a command row.

This module is the only writer of ``outbox_commands`` besides producers' INSERTs. All SQL lives in
``gxsubmit/sql``: ``NNNN_<name>.sql`` are the migrations, ``queries.sql`` holds the named statements.
Every completion is fenced by the row's lease token, so a worker that lost its lease cannot overwrite
a row another worker now holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import operator
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from gxsubmit.dbroute import CONNECT_ARGS, behind_proxy
from gxsubmit.rowdecode import decode_payloads, json_loads

__all__ = [
    "CHANNEL",
    "ERROR_MAX_BYTES",
    "STATUSES",
    "ClaimedCommand",
    "Committed",
    "Notifier",
    "OutboxStore",
    "QueueStats",
    "SchemaNotMigrated",
    "SubmittedTx",
    "TxRecord",
    "enqueue",
    "latest_version",
    "migrate",
    "schema_version",
    "truncate_error",
]

CHANNEL = "gxsubmit"  # also spelled out in sql/0001_init.sql and queries.sql
STATUSES = ("PENDING", "CLAIMED", "SUBMITTED", "COMMITTED", "FAILED")
ERROR_MAX_BYTES = 2000
ERROR_CODE_MAX_BYTES = 64
MAX_CLAIM = 1000  # rows per claim statement; the claim's LIMIT is a literal, so few distinct plans

_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


class SchemaNotMigrated(RuntimeError):
    """The outbox table does not exist in the configured schema: run ``gxsubmit migrate``."""


# -- SQL loading ------------------------------------------------------------------------------------


def _sql_text(name: str) -> str:
    return resources.files("gxsubmit").joinpath("sql", name).read_text(encoding="utf-8")


@cache
def _queries() -> dict[str, str]:
    text = _sql_text("queries.sql")
    parts = _NAME_RE.split(text)
    # parts = [header, name1, body1, name2, body2, ...]
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


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


def _compose(name: str, schema: str, **literals: int) -> sql.Composed:
    subs: dict[str, sql.Composable] = {"schema": sql.Identifier(schema), "schema_name": sql.Literal(schema)}
    subs.update({k: sql.Literal(v) for k, v in literals.items()})
    return sql.SQL(_queries()[name]).format(**subs)


def _lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory lock key per schema (Python's hash() is salted per process)."""
    digest = hashlib.sha256(f"gxsubmit.migrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# -- migrations -------------------------------------------------------------------------------------


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


# -- values -----------------------------------------------------------------------------------------


def truncate_error(text: str, max_bytes: int = ERROR_MAX_BYTES) -> str:
    """Make ``text`` storable: at most ``max_bytes`` of UTF-8, never cut inside a character.

    PostgreSQL text cannot hold NUL or lone surrogates, so those are replaced rather than failing the
    very update that records an error.
    """
    text = text.replace("\x00", "\ufffd")
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    marker = "…".encode()
    cut = data[: max(0, max_bytes - len(marker))]
    return cut.decode("utf-8", "ignore") + marker.decode()


@dataclass(frozen=True, slots=True)
class ClaimedCommand:
    """A row leased to this worker. ``attempts`` (every claim) and ``counted_attempts`` (the claims that
    count against max_attempts, migration 0006) already count this claim."""

    id: uuid.UUID
    seq: int
    tenant_id: str
    service: str
    command_type: str
    request_id: str
    payload: Any
    attempts: int
    counted_attempts: int
    lease_token: uuid.UUID
    tx_nonce: bytes | None
    fabric_tx_id: str | None
    creator_fingerprint: str | None
    #: expiry of the certificate the stored tx id was signed under (NULL on rows from before 0004)
    creator_not_after: datetime | None
    submitted_before: bool
    created_at: datetime
    #: earlier claims of this row that ended in its worker crashing (migration 0009)
    crashed_claims: int = 0
    #: the generation the nonce is derived at: how many of the row's tx ids were found INVALID (0008)
    tx_generation: int = 0


#: ClaimedCommand's exact slot layout, but not frozen: the claim fills one of these per row (plain slot
#: stores) and then relabels it as a ClaimedCommand, which Python allows between classes of identical
#: slots. A frozen dataclass's __init__ sets each of its 15 fields through object.__setattr__: 1.6 us a
#: row here against 0.4 this way, more than reading the row off the wire costs.
_ClaimedBuilder = make_dataclass(
    "_ClaimedBuilder", [(f.name, f.type) for f in fields(ClaimedCommand)], slots=True
)


def _claimed(row: tuple[Any, ...], payload: Any) -> ClaimedCommand:
    """The claim's row (in field order, payload still JSON text) as a ClaimedCommand."""
    obj = _ClaimedBuilder(*row)
    obj.payload = payload
    obj.__class__ = ClaimedCommand
    return cast(ClaimedCommand, obj)


@dataclass(frozen=True, slots=True)
class Committed:
    """A commit outcome to record (VALID, or another code the worker chose to record as COMMITTED)."""

    id: uuid.UUID
    token: uuid.UUID
    tx_id: str | None
    block: int | None
    validation_code: str


@dataclass(frozen=True, slots=True)
class TxRecord:
    """One row's nonce + tx id to store before its first Endorse (see ``record_tx_many``)."""

    id: uuid.UUID
    token: uuid.UUID
    nonce: bytes
    tx_id: str
    creator_fingerprint: str
    #: the certificate's expiry: once it is well past, a lost tx id can be abandoned (DESIGN 2.5)
    creator_not_after: datetime | None = None


@dataclass(frozen=True, slots=True)
class SubmittedTx:
    """The write-ahead of one Submit (``mark_submitted_tx``): what the envelope about to leave carries."""

    id: uuid.UUID
    token: uuid.UUID
    tx_id: str
    generation: int
    creator_fingerprint: str
    creator_not_after: datetime | None = None
    #: a stored nonce the row keeps (from before 0008); None for a derived one, which is not stored
    nonce: bytes | None = None


#: Rows deleted per statement by ``OutboxStore.prune``: short transactions, bounded WAL per commit.
PRUNE_BATCH = 5_000

#: Below this many rows (the planner's estimate) the statistics count COMMITTED rows exactly. A seq scan of
#: 100 000 rows costs the server ~10-20 ms; the supervisor refreshes every 3-15 s.
EXACT_COMMITTED_BELOW = 100_000


@dataclass(frozen=True, slots=True)
class QueueStats:
    by_status: dict[str, int] = field(default_factory=dict)
    by_status_type: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_pending_age_s: float | None = None
    failed_by_code: dict[str, int] = field(default_factory=dict)
    #: unfinished rows whose last try failed, by that error code
    retrying_by_code: dict[str, int] = field(default_factory=dict)
    #: by_status["COMMITTED"] is the planner's estimate and by_status_type has no COMMITTED entries
    #: (a table of at least ``EXACT_COMMITTED_BELOW`` rows; see ``OutboxStore.stats``)
    committed_estimated: bool = False


#: the claim's decoders live in gxsubmit.rowdecode (one row that cannot be decoded fails alone)
_json_loads = json_loads
_decode_payloads = decode_payloads


# -- producer side ----------------------------------------------------------------------------------


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


# -- worker side ------------------------------------------------------------------------------------


_BY_SEQ = operator.attrgetter("seq")


def _pairs(items: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> dict[str, list[uuid.UUID]]:
    return {"ids": [i for i, _ in items], "tokens": [t for _, t in items]}


class OutboxStore:
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

    async def suspects_due(self, types: Sequence[str]) -> bool:
        """Whether a row of ``types`` waits to be claimed alone (:meth:`claim_suspect`)."""
        rows = await self._rows("suspects_due", {"types": list(types)})
        return bool(rows and rows[0][0])

    async def renew(self, leases: Sequence[tuple[uuid.UUID, uuid.UUID]], lease_s: float) -> set[uuid.UUID]:
        """Extend the leases still held; return their ids (the others were lost)."""
        if not leases:
            return set()
        return await self._held("renew", {**_pairs(leases), "lease_s": float(lease_s)})

    async def record_tx(
        self,
        id: uuid.UUID,
        token: uuid.UUID,
        *,
        nonce: bytes,
        tx_id: str,
        creator_fingerprint: str,
        creator_not_after: datetime | None = None,
    ) -> bool:
        """Durably store the attempt's nonce and tx id. Must succeed before the first Endorse."""
        params = {
            "id": id,
            "token": token,
            "nonce": nonce,
            "tx_id": tx_id,
            "creator_fingerprint": creator_fingerprint,
            "creator_not_after": creator_not_after,
        }
        return bool(await self._rows("record_tx", params))

    async def record_tx_many(self, items: Sequence[TxRecord]) -> set[uuid.UUID]:
        """Batched :meth:`record_tx`: one statement for many rows; returns the ids whose lease held."""
        if not items:
            return set()
        params = {
            "ids": [r.id for r in items],
            "tokens": [r.token for r in items],
            "nonces": [r.nonce for r in items],
            "tx_ids": [r.tx_id for r in items],
            "fps": [r.creator_fingerprint for r in items],
            "not_afters": [r.creator_not_after for r in items],
        }
        return await self._held("record_tx_many", params)

    async def mark_submitted(self, items: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> set[uuid.UUID]:
        if not items:
            return set()
        return await self._held("mark_submitted", _pairs(items))

    async def mark_submitted_tx(self, items: Sequence[SubmittedTx]) -> set[uuid.UUID]:
        """SUBMITTED, with the tx id, nonce generation and creator of the envelope (before Submit)."""
        if not items:
            return set()
        params = {
            "ids": [r.id for r in items],
            "tokens": [r.token for r in items],
            "tx_ids": [r.tx_id for r in items],
            "gens": [r.generation for r in items],
            "fps": [r.creator_fingerprint for r in items],
            "not_afters": [r.creator_not_after for r in items],
            "nonces": [r.nonce for r in items],
        }
        return await self._held("mark_submitted_tx", params)

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
        if not items:
            return set()
        params = {
            "ids": [c.id for c in items],
            "tokens": [c.token for c in items],
            "tx_ids": [c.tx_id for c in items],
            "blocks": [c.block for c in items],
            "codes": [c.validation_code for c in items],
        }
        return await self._held("mark_committed", params)

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
        params = {
            "id": id,
            "token": token,
            "error_code": truncate_error(error_code, ERROR_CODE_MAX_BYTES),
            "error": truncate_error(error),
            "delay_s": max(0.0, float(delay_s)),
            "burn": burn_nonce,
            "counts": counts,
            "generation": generation,
        }
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
        params = {
            "id": id,
            "token": token,
            "error_code": truncate_error(error_code, ERROR_CODE_MAX_BYTES),
            "error": truncate_error(error),
            "tx_id": tx_id,
            "validation_code": validation_code,
        }
        return bool(await self._rows("mark_failed", params))

    async def release(self, leases: Sequence[tuple[uuid.UUID, uuid.UUID]]) -> int:
        """Hand rows back at shutdown: claimable at once, and the attempt is not counted."""
        if not leases:
            return 0
        rows = await self._rows("release", _pairs(leases))
        return int(rows[0][0])

    async def release_owned(self, owners: Sequence[str]) -> int:
        """Hand back every leased row of these worker ids (processes known to have exited).

        Only safe when no live process uses those ids. The attempt stays counted; the nonce is kept.
        """
        if not owners:
            return 0
        rows = await self._rows("release_owned", {"owners": list(owners)})
        return int(rows[0][0])

    async def release_crashed(self, owners: Sequence[str], limit: int) -> tuple[int, list[str]]:
        """:meth:`release_owned` for workers that crashed or were killed as hung: each of their rows'
        claims counts as a crash; a row that reaches ``limit`` is FAILED (WORKER_CRASH) instead of
        handed back, and one a crash short of it is set to run alone (a single crash changes nothing:
        it may be the host's doing). Returns (rows handed back, command type of each row failed)."""
        if not owners:
            return 0, []
        rows = await self._rows("release_crashed", {"owners": list(owners), "limit": int(limit),
                                                    "alone_from": max(1, int(limit) - 1)})
        return int(rows[0][0]), list(rows[0][1])

    async def waiting_for_key(self) -> tuple[int, int]:
        """(rows, keys): PENDING rows held back by an earlier unfinished row of their order key."""
        rows = await self._rows("waiting_for_key", {})
        return int(rows[0][0]), int(rows[0][1])

    async def fail_unroutable(self, routed_types: Sequence[str]) -> int:
        """Dead-letter PENDING rows whose type no catalogue route serves (pass every routed type)."""
        rows = await self._rows("fail_unroutable", {"types": list(routed_types)})
        return int(rows[0][0])

    async def notify_probe(self, payload: str) -> None:
        """NOTIFY a wake-up probe (see :meth:`Notifier.probe`)."""
        await self._rows("notify_probe", {"payload": payload})

    async def stats(self, *, exact_below: int = EXACT_COMMITTED_BELOW) -> QueueStats:
        """Counts for /status, the gauges and ``gxsubmit status``, in one statement (queries.sql ``stats``).

        Unfinished and FAILED rows are exact. COMMITTED rows are counted only while the planner estimates
        the table below ``exact_below`` rows; above it their total is that estimate minus the other rows
        and no per-type split is known: the supervisor refreshes these every 3-15 s, and counting a
        retained history of millions of rows each time would keep a core of the database busy.
        """
        by_status_type: dict[tuple[str, str], int] = {}
        by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        failed: dict[str, int] = {}
        retrying: dict[str, int] = {}
        oldest: float | None = None
        reltuples = -1
        for status, ctype, code, count, age in await self._rows("stats", {"exact_below": exact_below}):
            n = int(count)
            if status is None:  # the last row: the planner's estimate of the table's size
                reltuples = n
                continue
            by_status_type[(status, ctype)] = by_status_type.get((status, ctype), 0) + n
            by_status[status] = by_status.get(status, 0) + n
            if status == "FAILED":
                failed[code or ""] = failed.get(code or "", 0) + n
            elif code is not None and status != "COMMITTED":
                retrying[code] = retrying.get(code, 0) + n
            if age is not None:
                oldest = max(oldest or 0.0, float(age))
        estimated = not by_status.get("COMMITTED") and reltuples >= exact_below
        if estimated:
            others = sum(n for s, n in by_status.items() if s != "COMMITTED")
            by_status["COMMITTED"] = max(0, reltuples - others)
        return QueueStats(
            by_status=by_status,
            by_status_type=by_status_type,
            oldest_pending_age_s=oldest,
            failed_by_code=failed,
            retrying_by_code=retrying,
            committed_estimated=estimated,
        )

    async def requeue(
        self, *, ids: Sequence[uuid.UUID] = (), error_code: str | None = None, all_failed: bool = False
    ) -> int:
        """Re-drive FAILED rows: PENDING now, attempts 0, error cleared.

        The nonce is kept unless the row's tx id committed INVALID (see queries.sql ``requeue``).
        """
        if not ids and error_code is None and not all_failed:
            return 0
        params = {"ids": list(ids), "error_code": error_code, "all_failed": all_failed}
        rows = await self._rows("requeue", params)
        return int(rows[0][0])

    async def record_creator_expiry(self, fingerprint: str, not_after: datetime) -> int:
        """Record a certificate's expiry on the unfinished rows it signed that have none; return how many.

        For rows recorded before migration 0004 (or by an older release after a rollback): with the
        expiry known, the worker can abandon their old tx id once it can no longer commit (DESIGN 2.5).
        """
        rows = await self._rows("record_creator_expiry", {"fingerprint": fingerprint, "not_after": not_after})
        return int(rows[0][0])

    async def prune(
        self,
        older_than_s: float,
        *,
        batch: int = PRUNE_BATCH,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, datetime]:
        """Delete COMMITTED rows committed more than ``older_than_s`` ago; return (rows, cutoff).

        FAILED and unfinished rows stay. Each batch is its own short transaction (locks and WAL stay
        small; an interrupted run keeps what it did). The seq where recent rows begin is found first by a
        binary search of index lookups, so neither the search nor the batches read the recent table.
        ``dry_run`` counts instead of deleting. ``progress`` gets the running total after each batch.
        """
        cutoff = (await self._rows("prune_cutoff", {"older_than_s": older_than_s}))[0][0]
        first, last = (await self._rows("prune_seq_range", {}))[0]
        if first is None:
            return 0, cutoff
        lo, hi = int(first), int(last) + 1  # rows below lo were created before the cutoff; from hi on, not
        while lo < hi:
            mid = (lo + hi) // 2
            found = await self._rows("prune_probe", {"seq": mid, "cutoff": cutoff})
            if found and found[0][1]:
                lo = min(int(found[0][0]) + 1, hi)
            else:
                hi = mid
        if dry_run:
            rows = await self._rows("prune_count", {"below_seq": lo, "cutoff": cutoff})
            return int(rows[0][0]), cutoff
        total, after = 0, int(first) - 1
        while True:
            params = {"after_seq": after, "below_seq": lo, "cutoff": cutoff, "batch": batch}
            n, last_seq = (await self._rows("prune_batch", params))[0]
            if not n:
                return total, cutoff
            total, after = total + int(n), int(last_seq)
            if progress is not None:
                progress(total)


# -- wake-ups ---------------------------------------------------------------------------------------

#: NOTIFY payloads of wake-up probes start with this (no schema name can: it is not an identifier).
PROBE_PREFIX = "~probe:"


def _ignore_notify(_n: psycopg.Notify) -> None:
    return None


class Notifier:
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
    ) -> Notifier:
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
