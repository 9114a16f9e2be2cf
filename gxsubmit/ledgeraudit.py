"""Audit an emulator ledger file against the outbox: was every command's effect recorded exactly once?

The one auditor of the demo, the acceptance tests and the bench. The emulator's ledger file holds one
JSON object per transaction (valid or not). Two views of the same question:

- :func:`audit_ledger`, from the table: every COMMITTED row's tx id is VALID on the ledger exactly
  once, and no VALID transaction is claimed by no row (the demo's summary, the acceptance tests);
- :func:`audit_exactly_once`, from the commands: given each command's ``(function, args)`` (tests make
  them unique), exactly one VALID transaction carries them and it is the one the row recorded, without
  trusting the row to say which.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

__all__ = [
    "ArgsKey",
    "Audit",
    "AuditReport",
    "args_key",
    "audit_exactly_once",
    "audit_ledger",
    "read_ledger",
    "report_sql",
    "valid_by_args",
]

ArgsKey = tuple[str, tuple[str, ...]]


def report_sql(name: str, schema: str) -> sql.Composed:
    """One named read-only report of ``sql/demo.sql`` for ``schema``."""
    text = resources.files("gxsubmit").joinpath("sql", "demo.sql").read_text(encoding="utf-8")
    marker = f"-- name: {name}\n"
    body = text.split(marker, 1)[1].split("\n-- name:", 1)[0].strip()
    return sql.SQL(body).format(schema=sql.Identifier(schema))


def read_ledger(path: Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """Every transaction of the ledger file (a missing file is an empty ledger).

    A torn last line (the emulator still writing) is skipped, unless ``strict``: then it raises."""
    out: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError), Path(path).open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                if strict:
                    raise
    return out


# --- from the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """Ledger file against the table: every COMMITTED row has exactly one VALID transaction."""

    committed_rows: int
    valid_txs: int
    missing: list[str]  # COMMITTED rows whose tx id has no VALID tx on the ledger
    duplicated: list[str]  # tx ids with more than one VALID tx
    unexpected: list[str]  # VALID txs that no COMMITTED row claims
    unresolved: int  # rows not yet COMMITTED/FAILED

    @property
    def exactly_once(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected) and self.unresolved == 0


def audit_ledger(conn: psycopg.Connection[Any], schema: str, ledger: Path) -> Audit:
    rows = conn.execute(report_sql("rows_for_audit", schema)).fetchall()
    valid = Counter(tx["tx_id"] for tx in read_ledger(ledger) if tx.get("validation_code") == "VALID")
    committed = {r[3] for r in rows if r[2] == "COMMITTED"}
    return Audit(
        committed_rows=sum(1 for r in rows if r[2] == "COMMITTED"),
        valid_txs=sum(valid.values()),
        missing=sorted(r[0] for r in rows if r[2] == "COMMITTED" and valid.get(r[3], 0) == 0),
        duplicated=sorted(tx for tx, n in valid.items() if n > 1),
        unexpected=sorted(tx for tx in valid if tx not in committed),
        unresolved=sum(1 for r in rows if r[2] not in ("COMMITTED", "FAILED")),
    )


# --- from the commands -----------------------------------------------------------------------------


def args_key(function: str, args: Sequence[str]) -> ArgsKey:
    return (function, tuple(args))


def valid_by_args(lines: Iterable[Mapping[str, Any]]) -> dict[ArgsKey, list[str]]:
    """(function, args) -> tx ids of VALID transactions with exactly those arguments."""
    out: dict[ArgsKey, list[str]] = defaultdict(list)
    for tx in lines:
        if tx.get("validation_code") == "VALID":
            out[args_key(str(tx["function"]), [str(a) for a in tx["args"]])].append(str(tx["tx_id"]))
    return out


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    valid_txs: int = 0
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"audit: {self.checked} commands, {self.valid_txs} VALID txs"
        return head if self.ok else head + "\n  " + "\n  ".join(self.problems[:30])


def audit_exactly_once(
    ledger: Path,
    expected: Mapping[uuid.UUID, ArgsKey],
    rows: Mapping[uuid.UUID, Mapping[str, Any]],
    *,
    require_committed: bool = True,
) -> AuditReport:
    """Check every command in ``expected`` (id -> (function, args)) against ledger and rows.

    - exactly one VALID ledger tx has the command's (function, args) (at most one if not committed);
    - a COMMITTED row's fabric_tx_id is that tx and its commit_block is that tx's block;
    - with ``require_committed`` every row is COMMITTED.
    """
    lines = read_ledger(ledger, strict=True)
    by_args = valid_by_args(lines)
    by_tx = {str(t["tx_id"]): t for t in lines if t.get("validation_code") == "VALID"}
    tx_counts = Counter(str(t["tx_id"]) for t in lines if t.get("validation_code") == "VALID")
    report = AuditReport(valid_txs=len(by_tx), checked=len(expected))
    for tx_id, n in tx_counts.items():
        if n > 1:
            report.problems.append(f"tx {tx_id} VALID {n} times")
    for cid, key in expected.items():
        row = rows.get(cid)
        if row is None:
            report.problems.append(f"{cid}: no outbox row")
            continue
        report.problems += _row_problems(cid, key, row, by_args.get(key, []), by_tx, require_committed)
    return report


def _row_problems(
    cid: uuid.UUID,
    key: ArgsKey,
    row: Mapping[str, Any],
    txs: Sequence[str],
    by_tx: Mapping[str, Mapping[str, Any]],
    require_committed: bool,
) -> list[str]:
    problems: list[str] = []
    status = row["status"]
    if len(txs) > 1:
        problems.append(f"{cid}: {len(txs)} VALID txs for {key}: {list(txs)}")
    if status == "COMMITTED":
        if len(txs) != 1:
            problems.append(f"{cid}: COMMITTED but {len(txs)} VALID txs on the ledger")
        elif row["fabric_tx_id"] != txs[0]:
            problems.append(f"{cid}: row tx {row['fabric_tx_id']} != ledger tx {txs[0]}")
        elif row.get("commit_block") is not None and int(row["commit_block"]) != int(by_tx[txs[0]]["block"]):
            problems.append(f"{cid}: row block {row['commit_block']} != {by_tx[txs[0]]['block']}")
    elif require_committed:
        problems.append(f"{cid}: status {status} ({row.get('error_code')}: {str(row.get('error'))[:200]})")
    elif status == "FAILED" and txs:
        problems.append(f"{cid}: FAILED but a VALID tx {txs[0]} is on the ledger")
    return problems
