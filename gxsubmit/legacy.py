"""Adopting an existing outbox table (the GX services' Prisma ``"OutboxCommand"``) without touching its
producers: ``gxsubmit migrate --legacy-outbox TABLE`` installs triggers that queue every committed row
in ``outbox_commands`` and write each command's status back to its row; ``--remove-legacy-outbox``
hands the unfinished rows back in a shape the old worker runs and removes everything again.

The SQL is in ``gxsubmit/sql/legacy_outbox.sql``; both tables and the mapping are in
docs/design.md#adopted-legacy-table-the-services-outboxcommand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_S",
    "DEFAULT_MAX_RETRIES",
    "REQUIRED_COLUMNS",
    "AdoptionReport",
    "LegacyError",
    "RemovalReport",
    "adopt",
    "parse_table_name",
    "remove",
]

#: The old worker's LOCK_TIMEOUT code default (its ConfigMap may say 30 s: pass that then).
DEFAULT_LOCK_TIMEOUT_S = 300.0

#: The old worker's MAX_RETRIES default: a FAILED row below it is retried by the old worker.
DEFAULT_MAX_RETRIES = 5

#: Columns of the legacy table the triggers read or write (the Prisma model's names).
REQUIRED_COLUMNS = (
    "id", "tenantId", "service", "commandType", "requestId", "payload", "status", "attempts", "lockedBy",
    "lockedAt", "submittedAt", "fabricTxId", "commitBlock", "errorCode", "error", "createdAt", "updatedAt",
)
#: Every value the write-back and the hand-back store in "status".
LEGACY_STATUSES = ("PENDING", "LOCKED", "SUBMITTED", "COMMITTED", "FAILED")

_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_UNQUOTED = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_TEXT_TYPES = ("text", "varchar", "bpchar")


class LegacyError(Exception):
    """Something an operator must fix before adoption (or removal) can run; one line."""


@cache
def _queries() -> dict[str, str]:
    text = resources.files("gxsubmit").joinpath("sql", "legacy_outbox.sql").read_text(encoding="utf-8")
    parts = _NAME_RE.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def parse_table_name(text: str) -> tuple[str | None, str]:
    """``"OutboxCommand"``, ``gx."OutboxCommand"`` or ``outbox`` as SQL reads them: (schema or None, name).

    Quoted parts keep their case (``""`` is a quote inside), unquoted ones fold to lower case, as in SQL.
    """
    parts: list[str] = []
    i, n = 0, len(text := text.strip())
    while True:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise LegacyError(f"table name {text!r}: unterminated quoted identifier")
                buf.append(text[j:k])
                if text.startswith('"', k + 1):
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            part = "".join(buf)
            if not part:
                raise LegacyError(f"table name {text!r}: empty quoted identifier")
        else:
            m = _UNQUOTED.match(text, i)
            if not m:
                raise LegacyError(f"table name {text!r} is not a table name (e.g. '\"OutboxCommand\"' or "
                                  f"'gx.\"OutboxCommand\"')")
            part, i = m.group(0).lower(), m.end()
        parts.append(part)
        if i == n:
            break
        if text[i] != "." or len(parts) == 2:
            raise LegacyError(f"table name {text!r}: expected at most schema.table")
        i += 1
    return (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])


@dataclass(frozen=True)
class _Table:
    """The resolved legacy table and what its triggers need to know about it."""

    nspname: str
    relname: str
    status_type: sql.Composable
    command_types: tuple[str, ...] | None  # the enum's labels; None when "commandType" is text

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.nspname, self.relname)

    @property
    def display(self) -> str:
        return f"{_quote(self.nspname)}.{_quote(self.relname)}"


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class AdoptionReport:
    """What one run of the adoption did (the CLI prints its lines)."""

    table: str
    pending_taken: int
    locked_taken: int
    refused: int
    lock_timeout_s: float
    #: "CommandType" values the catalogue has no route for: their rows fail UNROUTABLE, visibly
    unrouted_types: tuple[str, ...]

    def lines(self) -> list[str]:
        out = [
            f"legacy outbox {self.table}: adopted (new rows are queued in the producers' transaction, "
            f"statuses are written back)",
            f"  backfill: {self.pending_taken} PENDING rows queued, {self.locked_taken} LOCKED by the old "
            f"worker queued to start once their lock is {self.lock_timeout_s:g} s old (unless it finishes "
            f"them first)",
        ]
        if self.refused:
            out.append(f"  {self.refused} rows FAILED with GXSUBMIT_DUPLICATE_REQUEST or GXSUBMIT_REJECTED: "
                       f"see their error column")
        if self.unrouted_types:
            out.append("  CommandType values without a route in the catalogue (their rows will FAIL with "
                       "UNROUTABLE): " + ", ".join(self.unrouted_types))
        return out


@dataclass(frozen=True)
class RemovalReport:
    """What the removal handed back (the CLI prints its lines)."""

    table: str
    to_pending: int
    to_locked: int
    withdrawn: int
    submitted_fixed: int
    dead_kept: int
    max_retries: int

    def lines(self) -> list[str]:
        return [
            f"legacy outbox {self.table}: adoption removed; {self.withdrawn} unfinished commands withdrawn "
            f"from gxsubmit's queue",
            f"  handed back: {self.to_pending} rows PENDING, {self.to_locked + self.submitted_fixed} LOCKED "
            f"(lockedBy gxsubmit-handback; the old worker takes them over after its lock timeout; "
            f"GXSUBMIT_IN_DOUBT rows name a tx that may be on the ledger)",
            f"  {self.dead_kept} of gxsubmit's FAILED rows had attempts raised to {self.max_retries} (the "
            f"old worker's MAX_RETRIES) so it does not retry them",
        ]


def _compose(name: str, schema: str, table: _Table | None = None, lock_timeout_s: float = 0.0,
             max_retries: int = DEFAULT_MAX_RETRIES) -> sql.Composed:
    subs: dict[str, sql.Composable] = {
        "schema": sql.Identifier(schema), "lock_timeout": sql.Literal(lock_timeout_s),
        "max_retries": sql.Literal(max_retries)}
    if table is not None:
        subs.update(legacy=table.ident, legacy_name=sql.Literal(table.display), status_type=table.status_type)
    return sql.SQL(_queries()[name]).format(**subs)


async def _one(conn: psycopg.AsyncConnection[Any], query: sql.Composed,
               params: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _resolve(conn: psycopg.AsyncConnection[Any], schema: str, text: str) -> _Table:
    """Find the table the name means (an unqualified one through the session's search_path); check it."""
    nsp, rel = parse_table_name(text)
    regname = sql.Identifier(*((nsp, rel) if nsp else (rel,))).as_string(conn)
    cur = await conn.execute(_compose("find_table", schema), {"name": regname})
    found = await cur.fetchone()
    if found is None:
        cur = await conn.execute(_compose("similar_tables", schema), {"relname": rel})
        near = [f"{_quote(n)}.{_quote(r)}" for n, r in await cur.fetchall()]
        hint = (f"; did you mean {' or '.join(near)} (quote mixed-case names: '\"OutboxCommand\"')?"
                if near else "")
        raise LegacyError(f"no table {text.strip()} in this database{hint}")
    table_name = sql.Identifier(found[0], found[1]).as_string(conn)
    cur = await conn.execute(_compose("table_columns", schema), {"name": table_name})
    columns = {name: (tns, typ, is_enum) for name, tns, typ, is_enum in await cur.fetchall()}
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    display = f"{_quote(found[0])}.{_quote(found[1])}"
    if missing:
        raise LegacyError(f"{display} is not an outbox table of the GX services: no column "
                          + ", ".join(f'"{c}"' for c in missing))
    if columns["id"][1] not in _TEXT_TYPES:
        raise LegacyError(f'{display}: column "id" is {columns["id"][1]}, adoption needs text '
                          f'(Prisma String)')
    s_nsp, s_typ, s_enum = columns["status"]
    if s_enum:
        cur = await conn.execute(_compose("enum_labels", schema), {"nspname": s_nsp, "typname": s_typ})
        labels = {r[0] for r in await cur.fetchall()}
        lacking = [s for s in LEGACY_STATUSES if s not in labels]
        if lacking:
            raise LegacyError(f'{display}: enum {_quote(s_typ)} of "status" lacks ' + ", ".join(lacking))
    c_nsp, c_typ, c_enum = columns["commandType"]
    command_types: tuple[str, ...] | None = None
    if c_enum:
        cur = await conn.execute(_compose("enum_labels", schema), {"nspname": c_nsp, "typname": c_typ})
        command_types = tuple(r[0] for r in await cur.fetchall())
    return _Table(found[0], found[1], sql.Identifier(s_nsp, s_typ), command_types)


async def _adopted_elsewhere(conn: psycopg.AsyncConnection[Any], schema: str, table: _Table) -> str | None:
    cur = await conn.execute(_compose("trigger_owner", schema), {"name": table.ident.as_string(conn)})
    row = await cur.fetchone()
    return str(row[0]) if row and row[0] != schema else None


async def _registered(conn: psycopg.AsyncConnection[Any], schema: str) -> list[str]:
    name = sql.Identifier(schema, "gxsubmit_legacy_outbox").as_string(conn)
    if not (await _one(conn, _compose("registry_exists", schema), {"name": name}))[0]:
        return []
    cur = await conn.execute(_compose("adopted_tables", schema))
    return [str(r[0]) for r in await cur.fetchall()]


async def adopt(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    table_text: str,
    *,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    routed_types: Collection[str] | None = None,
) -> AdoptionReport:
    """Install (or re-install: idempotent) the adoption of ``table_text`` into ``schema``'s outbox and take
    over the rows already waiting, all in one transaction. ``schema`` must be migrated."""
    if not (math.isfinite(lock_timeout_s) and lock_timeout_s >= 0):
        raise LegacyError(f"--legacy-lock-timeout must be a number of seconds >= 0, got {lock_timeout_s}")
    async with conn.transaction():
        table = await _resolve(conn, schema, table_text)
        other = await _adopted_elsewhere(conn, schema, table)
        if other is not None:
            raise LegacyError(f"{table.display} is already adopted by gxsubmit schema {other!r}; remove that "
                              f"first (gxsubmit migrate --schema {other} --remove-legacy-outbox ...)")
        already = [t for t in await _registered(conn, schema) if t != table.display]
        if already:
            raise LegacyError(f"schema {schema!r} already adopts {already[0]}; one legacy table per schema")
        await conn.execute(_compose("adoption_lock_timeout", schema))
        for name in ("create_registry", "create_link", "command_id_function", "adopt_one_function",
                     "adopt_function", "take_function", "writeback_function", "guard_function",
                     "requeued_function", "drop_triggers", "create_triggers"):
            await conn.execute(_compose(name, schema, table, lock_timeout_s))
        # The table is locked against writes from here to the commit: the links' difference is the backfill's.
        pending0, locked0 = await _one(conn, _compose("backfill_summary", schema, table))
        await conn.execute(_compose("backfill", schema, table, lock_timeout_s))
        await conn.execute(_compose("record_adoption", schema, table, lock_timeout_s))
        pending1, locked1 = await _one(conn, _compose("backfill_summary", schema, table))
        pending, locked = pending1 - pending0, locked1 - locked0
        refused = (await _one(conn, _compose("refused_rows", schema, table)))[0]
    unrouted: tuple[str, ...] = ()
    if routed_types is not None and table.command_types is not None:
        unrouted = tuple(t for t in table.command_types if t not in set(routed_types))
    return AdoptionReport(table.display, int(pending), int(locked), int(refused), lock_timeout_s, unrouted)


async def remove(conn: psycopg.AsyncConnection[Any], schema: str, table_text: str, *,
                 max_retries: int = DEFAULT_MAX_RETRIES) -> RemovalReport:
    """Remove the adoption of ``table_text``: unfinished commands go back to the legacy table (PENDING, or
    LOCKED when gxsubmit may have put their tx on the ledger), dead letters keep ``attempts`` at least the
    old worker's ``max_retries`` (so it does not retry them), then triggers, functions and links go.
    Refuses while a running gxsubmit holds one of them (stop it first: its shutdown hands rows back)."""
    if max_retries < 0:
        raise LegacyError(f"--legacy-max-retries must be >= 0, got {max_retries}")
    async with conn.transaction():
        table = await _resolve(conn, schema, table_text)
        registered = await _registered(conn, schema)
        if table.display not in registered:
            raise LegacyError(f"schema {schema!r} does not adopt {table.display}"
                              + (f" (it adopts {registered[0]})" if registered else ""))
        await conn.execute(_compose("adoption_lock_timeout", schema))
        await conn.execute(_compose("lock_legacy", schema, table))
        # Dropping the write-back trigger locks outbox_commands until commit: no claim can start now.
        await conn.execute(_compose("drop_triggers", schema, table))
        busy, until = await _one(conn, _compose("in_flight", schema, table))
        if busy:
            ends = until.isoformat(timespec="seconds") if isinstance(until, datetime) else "?"
            raise LegacyError(f"{busy} adopted commands are in flight in a running gxsubmit (leases until "
                              f"{ends}); stop gxsubmit first (its shutdown hands them back), then run this "
                              f"again")
        to_pending, to_locked, withdrawn = await _one(conn, _compose("hand_back", schema, table))
        cur = await conn.execute(_compose("dead_letters_stay", schema, table, max_retries=max_retries))
        dead = cur.rowcount
        cur = await conn.execute(_compose("submitted_to_locked", schema, table))
        fixed = cur.rowcount
        await conn.execute(_compose("drop_objects", schema, table))
    return RemovalReport(table.display, int(to_pending), int(to_locked), int(withdrawn), max(0, fixed),
                         max(0, dead), max_retries)
