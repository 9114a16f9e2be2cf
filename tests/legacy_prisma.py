"""The GX services' Prisma outbox table, created as their migrations create it, and rows written the way
their writers write them (tests of gxsubmit.legacy). See
docs/design.md#adopted-legacy-table-the-services-outboxcommand."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

#: "CommandType" as production has it (main's 27 values, added by hand-run ALTER TYPE ... ADD VALUE).
COMMAND_TYPES = (
    "CREATE_USER", "TRANSFER_TOKENS", "DISTRIBUTE_GENESIS", "FREEZE_WALLET", "UNFREEZE_WALLET",
    "PROPOSE_ORGANIZATION", "ENDORSE_MEMBERSHIP", "ACTIVATE_ORGANIZATION", "DEFINE_AUTH_RULE",
    "INITIATE_MULTISIG_TX", "APPROVE_MULTISIG_TX", "EXECUTE_MULTISIG_TX", "APPLY_FOR_LOAN", "APPROVE_LOAN",
    "SUBMIT_PROPOSAL", "CAST_VOTE", "EXECUTE_PROPOSAL", "BOOTSTRAP_SYSTEM", "INITIALIZE_COUNTRY_DATA",
    "UPDATE_SYSTEM_PARAMETER", "PAUSE_SYSTEM", "RESUME_SYSTEM", "APPOINT_ADMIN", "ACTIVATE_TREASURY", "MINT",
    "APPLY_VELOCITY_TAX", "Q_SEND_PAY",
)
STATUSES = ("PENDING", "LOCKED", "SUBMITTED", "COMMITTED", "FAILED")

_DDL = """
CREATE TYPE {s}."CommandType" AS ENUM ({types});
CREATE TYPE {s}."OutboxStatus" AS ENUM ({statuses});
CREATE TABLE {s}."OutboxCommand" (
    "id" TEXT NOT NULL,
    "tenantId" TEXT NOT NULL,
    "service" TEXT NOT NULL,
    "commandType" {s}."CommandType" NOT NULL,
    "requestId" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "status" {s}."OutboxStatus" NOT NULL DEFAULT 'PENDING',
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "lockedBy" TEXT,
    "lockedAt" TIMESTAMPTZ(3),
    "submittedAt" TIMESTAMPTZ(3),
    "fabricTxId" TEXT,
    "commitBlock" BIGINT,
    "errorCode" TEXT,
    "error" TEXT,
    "createdAt" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMPTZ(3) NOT NULL,
    CONSTRAINT "OutboxCommand_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "OutboxCommand_tenantId_requestId_key" ON {s}."OutboxCommand" ("tenantId", "requestId");
CREATE INDEX "OutboxCommand_status_createdAt_idx" ON {s}."OutboxCommand" ("status", "createdAt");
CREATE INDEX "OutboxCommand_tenantId_status_idx" ON {s}."OutboxCommand" ("tenantId", "status");
CREATE INDEX "OutboxCommand_fabricTxId_idx" ON {s}."OutboxCommand" ("fabricTxId");
CREATE TABLE {s}."UserProfile" (
    "profileId" TEXT PRIMARY KEY,
    "status" TEXT NOT NULL,
    "updatedAt" TIMESTAMPTZ(3) NOT NULL
);
"""

_INSERT = """
INSERT INTO {s}."OutboxCommand"
       ("id", "tenantId", "service", "commandType", "requestId", "payload", "status", "attempts", "createdAt",
        "updatedAt")
VALUES {values}
"""

#: The columns whose shape "removal restores the old shape" compares.
SHAPE = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
  FROM pg_attribute AS a
 WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""


def create(conn: psycopg.Connection[Any], schema: str) -> None:
    """The enums, "OutboxCommand" with its indexes, and a domain table, in ``schema`` (which must exist)."""
    ddl = _DDL.format(
        s=sql.Identifier(schema).as_string(conn),
        types=", ".join(sql.Literal(t).as_string(conn) for t in COMMAND_TYPES),
        statuses=", ".join(sql.Literal(t).as_string(conn) for t in STATUSES),
    )
    conn.execute(ddl.encode())


def cuid() -> str:
    """A Prisma-style cuid (not a UUID)."""
    return "c" + format(int(time.time() * 1000), "x") + secrets.token_hex(8)


def insert(cur: psycopg.Cursor[Any], schema: str, rows: Sequence[tuple[str, str, str, Any]],
           *, service: str = "svc-identity", ids: Iterable[str] | None = None) -> list[str]:
    """One INSERT statement of ``rows`` = (commandType, requestId, tenantId, payload), as Prisma's create
    (one row) or createMany (several) sends it; returns the ids."""
    id_list = list(ids) if ids is not None else [cuid() for _ in rows]
    values, params = [], []
    for rid, (ctype, request_id, tenant, payload) in zip(id_list, rows, strict=True):
        values.append("(%s, %s, %s, CAST(%s AS {s}.\"CommandType\"), %s, %s::jsonb, "
                      "CAST('PENDING' AS {s}.\"OutboxStatus\"), 0, now(), now())")
        params += [rid, tenant, service, ctype, request_id, json.dumps(payload)]
    s = sql.Identifier(schema).as_string(cur)
    text = _INSERT.format(s=s, values=", ".join(v.format(s=s) for v in values))
    cur.execute(text.encode(), params)
    return id_list


def legacy_rows(conn: psycopg.Connection[Any], schema: str) -> dict[str, dict[str, Any]]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    query = sql.SQL('SELECT *, status::text AS status FROM {}."OutboxCommand"')
    cur.execute(query.format(sql.Identifier(schema)))
    return {r["id"]: r for r in cur.fetchall()}
