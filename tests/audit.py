"""Exactly-once audit for the tests: :mod:`gxsubmit.ledgeraudit` plus the outbox rows it checks.

The audit itself lives in gxsubmit.ledgeraudit (one auditor for the demo, the tests and the bench);
this module re-exports it under the names the tests import and adds the query for the rows.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from gxsubmit.ledgeraudit import (
    ArgsKey,
    AuditReport,
    args_key,
    audit_exactly_once,
    valid_by_args,
)
from gxsubmit.ledgeraudit import read_ledger as _read_ledger

__all__ = ["ArgsKey", "AuditReport", "args_key", "audit_exactly_once", "outbox_rows", "read_ledger",
           "valid_by_args"]


def read_ledger(path: Any) -> list[dict[str, Any]]:
    """Every transaction line of the ledger file, strictly (a bad line fails the test)."""
    return _read_ledger(path, strict=True)


def outbox_rows(url: str, schema: str) -> dict[uuid.UUID, dict[str, Any]]:
    """id -> row (status, fabric_tx_id, commit_block, validation_code, error_code, attempts, ...)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(
            sql.SQL(
                "SELECT id, command_type, status, fabric_tx_id, commit_block, validation_code, error_code, "
                "error, attempts, next_attempt_at, locked_by, payload::text AS payload, submitted_at "
                "FROM {}.outbox_commands"
            ).format(sql.Identifier(schema))
        )
        cols = [d.name for d in cur.description or ()]
        return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
