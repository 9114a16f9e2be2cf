"""``gxsubmit cancel`` as an operator runs it, against PostgreSQL and the emulator (issue 16).

Rows never handed to the orderer are cancelled; a row whose transaction may be on the ledger is resolved
through the gateway first: an INVALID outcome cancels it, VALID or no answer leaves it with a reason.
A cancelled row frees its order key.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import test_worker
from audit import read_ledger
from psycopg import sql
from test_worker import Harness, _user
from waiting import wait_for

emu_opts = test_worker.emu_opts
h = test_worker.h


def cancel(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
    env.update(h.config(commit_timeout=2.0).to_env())
    return subprocess.run([sys.executable, "-m", "gxsubmit", "cancel", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def set_row(h: Harness, rid: uuid.UUID, **values: Any) -> None:
    cols = sql.SQL(", ").join(sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k))
                              for k in values)
    with psycopg.connect(h.url, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {}.outbox_commands SET {} WHERE id = %(id)s").format(
            sql.Identifier(h.schema), cols), {**values, "id": rid})


def test_unsent_rows_are_cancelled_and_free_their_order_key(h: Harness) -> None:
    first, second = h.enqueue([_user("k1"), _user("k2")], order_keys=["acct-1", "acct-1"])
    other = h.enqueue([_user("x")])[0]
    # the head of the key cannot be sent (no worker runs yet): cancel it, by id and by request id
    done = cancel(h, "--id", str(first))
    assert done.returncode == 0, done.stderr
    assert "cancelled 1 row" in done.stdout
    rows = h.rows()
    assert (rows[first]["status"], rows[first]["error_code"]) == ("FAILED", "CANCELLED")
    assert "before it was submitted" in rows[first]["error"]
    again = cancel(h, "--id", str(first))
    assert again.returncode == 1 and "already FAILED" in again.stderr
    h.spawn("org1-partner-api")
    wait_for(lambda: h.all_final([second, other]), 30, 0.1, "the key's next row commits")
    assert h.rows()[second]["status"] == "COMMITTED"
    h.audit([second, other])
    missing = cancel(h, "--request-id", "no-such-request")
    assert missing.returncode == 1 and "no such row" in missing.stderr


def test_rows_that_may_be_on_the_ledger_are_resolved_first(h: Harness) -> None:
    # Three committed rows lend their transactions; then three unfinished rows are made to look as if
    # their worker had submitted them and died: one whose tx id committed VALID, one INVALID, one the
    # ledger does not know.
    h.emu.faults.mvcc = 1.0
    h.enqueue([_user("m")])
    h.spawn("org1-partner-api")

    def invalid_tx() -> str | None:
        lines = read_ledger(h.ledger)
        conflicts = (t["tx_id"] for t in lines if t["validation_code"] == "MVCC_READ_CONFLICT")
        return next(conflicts, None)

    invalid = wait_for(invalid_tx, 30, 0.1, "a transaction committed MVCC_READ_CONFLICT")
    h.emu.faults.mvcc = 0.0
    valid_src = h.enqueue([_user("v")])[0]
    wait_for(lambda: h.all_final([valid_src]), 30, 0.1, "valid row committed")
    h.stop_all()
    valid_tx = h.rows()[valid_src]["fabric_tx_id"]
    valid_row, invalid_row, unknown_row = h.enqueue([_user("a"), _user("b"), _user("c")])
    for rid, tx in ((valid_row, valid_tx), (invalid_row, invalid), (unknown_row, "ab" * 32)):
        set_row(h, rid, status="SUBMITTED", submitted_at=datetime.now(UTC), fabric_tx_id=tx)

    out = cancel(h, "--id", str(valid_row), "--id", str(invalid_row), "--id", str(unknown_row))
    assert out.returncode == 1
    assert "cancelled 1 row" in out.stdout
    rows = h.rows()
    assert (rows[invalid_row]["status"], rows[invalid_row]["error_code"]) == ("FAILED", "CANCELLED")
    assert rows[invalid_row]["validation_code"] == "MVCC_READ_CONFLICT"
    assert rows[valid_row]["status"] == "SUBMITTED" and rows[unknown_row]["status"] == "SUBMITTED"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2, out.stderr
    assert any(str(valid_row) in ln and "committed VALID" in ln for ln in lines), out.stderr
    assert any(str(unknown_row) in ln and "may still reach the ledger" in ln for ln in lines), out.stderr


def test_cancel_by_error_code_ends_the_rows_retrying_with_it(h: Harness) -> None:
    h.emu.faults.endorse_unavailable = 1.0
    ids = h.enqueue([_user(f"e{i}") for i in range(3)])
    h.spawn("org1-partner-api")
    wait_for(lambda: all(r["error_code"] == "GATEWAY_UNAVAILABLE" for i, r in h.rows().items() if i in ids),
             30, 0.1, "rows retrying")
    h.stop_all()
    out = cancel(h, "--error-code", "GATEWAY_UNAVAILABLE")
    assert out.returncode == 0, out.stderr
    assert "cancelled 3 rows" in out.stdout
    assert all(h.rows()[i]["error_code"] == "CANCELLED" for i in ids)
