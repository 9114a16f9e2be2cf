"""Exactly-once audit of an emulator ledger against the outbox (shared by worker and supervisor tests).

The ledger file has one JSON object per transaction (valid or not). A command's effect is on the
ledger exactly once iff exactly one VALID transaction carries its arguments, and that transaction's
tx id is the one the outbox row recorded. Tests make every command's arguments unique (a user id,
a remark) so ``(function, args)`` identifies the command without trusting the row.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

ArgsKey = tuple[str, tuple[str, ...]]


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """Every transaction line of the ledger file (missing file = empty ledger)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def args_key(function: str, args: Sequence[str]) -> ArgsKey:
    return (function, tuple(args))


def valid_by_args(lines: Iterable[Mapping[str, Any]]) -> dict[ArgsKey, list[str]]:
    """(function, args) -> tx ids of VALID transactions with exactly those arguments."""
    out: dict[ArgsKey, list[str]] = defaultdict(list)
    for tx in lines:
        if tx.get("validation_code") == "VALID":
            out[args_key(str(tx["function"]), [str(a) for a in tx["args"]])].append(str(tx["tx_id"]))
    return out


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
    lines = read_ledger(ledger)
    by_args = valid_by_args(lines)
    by_tx = {str(t["tx_id"]): t for t in lines if t.get("validation_code") == "VALID"}
    tx_counts = Counter(str(t["tx_id"]) for t in lines if t.get("validation_code") == "VALID")
    report = AuditReport(valid_txs=len(by_tx), checked=len(expected))
    for tx_id, n in tx_counts.items():
        if n > 1:
            report.problems.append(f"tx {tx_id} VALID {n} times")
    for cid, key in expected.items():
        row = rows.get(cid)
        txs = by_args.get(key, [])
        if row is None:
            report.problems.append(f"{cid}: no outbox row")
            continue
        status = row["status"]
        if len(txs) > 1:
            report.problems.append(f"{cid}: {len(txs)} VALID txs for {key}: {txs}")
        if status == "COMMITTED":
            if len(txs) != 1:
                report.problems.append(f"{cid}: COMMITTED but {len(txs)} VALID txs on the ledger")
            elif row["fabric_tx_id"] != txs[0]:
                report.problems.append(f"{cid}: row tx {row['fabric_tx_id']} != ledger tx {txs[0]}")
            elif row.get("commit_block") is not None and int(row["commit_block"]) != int(by_tx[txs[0]]["block"]):  # noqa: E501
                report.problems.append(f"{cid}: row block {row['commit_block']} != {by_tx[txs[0]]['block']}")
        elif require_committed:
            report.problems.append(
                f"{cid}: status {status} ({row.get('error_code')}: {str(row.get('error'))[:200]})"
            )
        elif status == "FAILED" and txs:
            report.problems.append(f"{cid}: FAILED but a VALID tx {txs[0]} is on the ledger")
    return report
