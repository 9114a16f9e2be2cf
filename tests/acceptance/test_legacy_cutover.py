"""The GX services' "OutboxCommand" adopted as operators do it: `gxsubmit migrate --legacy-outbox
'"OutboxCommand"'`, unchanged producers, a real supervisor and the emulator, then the removal."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import legacy_prisma as lp
import psycopg
import pytest
from audit import args_key, audit_exactly_once, outbox_rows
from dbutil import url_with_search_path
from harness import EmulatorProc, ServiceProc, audit, clean_env, service_settings
from psycopg import sql
from waiting import wait_for

from gxsubmit.catalog import load_catalog

pytestmark = pytest.mark.slow


def migrate(url: str, schema: str, *args: str) -> str:
    env = clean_env()
    env.update(GXSUBMIT_DATABASE_URL=url, GXSUBMIT_SCHEMA=schema)
    done = subprocess.run([sys.executable, "-m", "gxsubmit", "migrate", *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def user(name: str, **extra: Any) -> dict[str, Any]:
    return {"userId": name, "biometricHash": hashlib.sha256(name.encode()).hexdigest(), "nationality": "MY",
            "age": 30, **extra}


def test_services_table_through_a_supervisor_and_back(
    pg_url: str, schema: str, lschema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any],
    tmp_path: Path,
) -> None:
    t = sql.Identifier(lschema, "OutboxCommand").as_string(None)
    catalog = load_catalog()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.cursor()
        # What the old worker leaves at the cutover: PENDING rows, one it had LOCKED when it was stopped,
        # and its finished rows.
        pending = lp.insert(cur, lschema, [("CREATE_USER", f"pre-{i}", "default", user(f"pre-{i}"))
                                           for i in range(5)])
        left, old_done, old_failed = lp.insert(cur, lschema, [
            ("CREATE_USER", "left", "default", user("left")),
            ("CREATE_USER", "old-done", "default", user("old-done")),
            ("CREATE_USER", "old-failed", "default", user("old-failed"))])
        conn.execute(f'UPDATE {t} SET status = \'LOCKED\', "lockedBy" = \'outbox-submitter-7d9\', '
                     '"lockedAt" = now() - interval \'1 hour\' WHERE id = %s', (left,))
        conn.execute(f'UPDATE {t} SET status = \'COMMITTED\', "fabricTxId" = \'old-tx\', "commitBlock" = 9 '
                     'WHERE id = %s', (old_done,))
        conn.execute(f'UPDATE {t} SET status = \'FAILED\', attempts = 5, "errorCode" = \'10\' WHERE id = %s',
                     (old_failed,))
        before = conn.execute(lp.SHAPE, (t,)).fetchall()

    out = migrate(url_with_search_path(pg_url, lschema), schema, "--legacy-outbox", '"OutboxCommand"')
    assert "backfill: 5 PENDING rows queued, 1 LOCKED" in out, out

    svc = ServiceProc("svc", tmp_path, service_settings(pg_url, schema, wallet, emulator))
    procs.append(svc)
    svc.start().wait_ready()

    with psycopg.connect(pg_url) as conn:
        conn.execute(f'ALTER TYPE "{lschema}"."CommandType" ADD VALUE \'GOVT_NEW_THING\'')
        conn.commit()
        cur = conn.cursor()
        singles = []
        for i in range(4):   # the transfer endpoint's way: one insert, its own transaction
            singles += lp.insert(cur, lschema, [("CREATE_USER", f"s-{i}", "default", user(f"single-{i}"))])
            conn.commit()
        # svc-identity's batch approval: the users' rows and their profiles' update in one transaction
        conn.execute(f'INSERT INTO "{lschema}"."UserProfile" VALUES (\'p1\', \'PENDING\', now()), '
                     '(\'p2\', \'PENDING\', now())')
        batch = lp.insert(cur, lschema, [("CREATE_USER", f"batch-{i}", "default", user(f"batch-{i}"))
                                         for i in range(6)], service="svc-identity")
        conn.execute(f'UPDATE "{lschema}"."UserProfile" SET status = \'APPROVED\'')
        conn.commit()
        rolled = lp.insert(cur, lschema, [("CREATE_USER", "rolled-back", "default", user("rolled-back"))])
        conn.execute(f'UPDATE "{lschema}"."UserProfile" SET status = \'REJECTED\'')
        conn.rollback()
        poison = lp.insert(cur, lschema, [("CREATE_USER", "poison", "default", user("poison", age="old"))])[0]
        drift = lp.insert(cur, lschema, [("GOVT_NEW_THING", "drift", "default", {"x": 1})])[0]
        conn.commit()

    good = [*pending, left, *singles, *batch]
    adopted = [*good, poison, drift]

    def finished() -> bool:
        with psycopg.connect(pg_url, autocommit=True) as c:
            rows = lp.legacy_rows(c, lschema)
        return all(rows[i]["status"] in ("COMMITTED", "FAILED") for i in adopted)

    wait_for(finished, 120, interval=0.2, what="every adopted row finished")

    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = lp.legacy_rows(conn, lschema)
        query = sql.SQL("SELECT legacy_id, command_id FROM {}.gxsubmit_legacy_link").format(
            sql.Identifier(schema))
        links: dict[str, uuid.UUID] = dict(conn.execute(query).fetchall())
    commands = outbox_rows(pg_url, schema)
    for legacy_id in good:
        c, row = commands[links[legacy_id]], rows[legacy_id]
        assert row["status"] == "COMMITTED", (row, c)
        assert (row["fabricTxId"], row["commitBlock"]) == (c["fabric_tx_id"], c["commit_block"])
        assert row["submittedAt"] is not None and row["attempts"] == c["attempts"]
    assert rows[poison]["status"] == "FAILED" and rows[poison]["errorCode"] == "PAYLOAD_INVALID"
    assert "age" in rows[poison]["error"]
    assert rows[drift]["status"] == "FAILED" and rows[drift]["errorCode"] == "UNROUTABLE"
    assert "GOVT_NEW_THING" in rows[drift]["error"]
    assert rolled[0] not in rows
    # The old worker's finished rows were left as they were.
    assert (rows[old_done]["status"], rows[old_done]["fabricTxId"]) == ("COMMITTED", "old-tx")
    assert (rows[old_failed]["status"], rows[old_failed]["errorCode"]) == ("FAILED", "10")
    assert old_done not in links and old_failed not in links

    # Exactly once on the ledger: one VALID tx per command, the one its row (in both tables) names.
    route = catalog.route("CREATE_USER")
    assert route is not None
    # audit.outbox_rows returns payloads as text (hostile rows must not be decoded by the test)
    payloads = {i: json.loads(commands[links[i]]["payload"]) for i in good}
    expected = {links[i]: args_key(route.function, route.build_args(payloads[i])) for i in good}
    report = audit_exactly_once(emulator.ledger, expected, commands)
    assert report.ok, report
    assert audit(pg_url, schema, emulator.ledger).exactly_once
    assert len(emulator.valid_txs()) == len(good)

    # Rollback: gxsubmit stops (its shutdown hands back what it holds), one more row arrives, removal.
    assert svc.terminate(60) == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        late = lp.insert(conn.cursor(), lschema, [("CREATE_USER", "late", "default", user("late"))])[0]
    out = migrate(pg_url, schema, "--remove-legacy-outbox", f'{lschema}."OutboxCommand"')
    assert "1 unfinished commands withdrawn" in out, out
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute(lp.SHAPE, (t,)).fetchall() == before
        rows = lp.legacy_rows(conn, lschema)
        assert rows[late]["status"] == "PENDING"
        assert {r["status"] for r in rows.values()} <= {"PENDING", "LOCKED", "COMMITTED", "FAILED"}
        triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass "
                                "AND NOT tgisinternal", (t,)).fetchone()
        assert triggers == (0,)
