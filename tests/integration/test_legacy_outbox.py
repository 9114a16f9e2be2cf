"""Adoption of the GX services' "OutboxCommand" (gxsubmit.legacy) on a real PostgreSQL: producers' inserts,
the backfill, the write-back through the store's own statements, the old worker's statements, defensive
triggers and removal. The end-to-end run with a supervisor and the emulator is in
tests/acceptance/test_legacy_cutover.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import legacy_prisma as lp
import psycopg
import pytest
from dbutil import run_sync, url_with_search_path
from psycopg import sql
from waiting import wait_for

from gxsubmit import legacy
from gxsubmit.outbox import Committed, OutboxStore, TxRecord, enqueue

# The old worker's statements (docs/design.md#the-worker-it-replaces), as it sends them.
OLD_CLAIM = """
WITH picked AS (
    SELECT o.id FROM {t} AS o
     WHERE o.status = 'PENDING'
        OR (o.status = 'LOCKED' AND o."lockedAt" < now() - interval '30 seconds')
        OR (o.status = 'FAILED' AND o.attempts < 5)
     ORDER BY o."createdAt" LIMIT 10 FOR UPDATE SKIP LOCKED)
UPDATE {t} AS c SET status = 'LOCKED', "lockedBy" = 'old-worker', "lockedAt" = now(), "updatedAt" = now()
  FROM picked WHERE c.id = picked.id
RETURNING c.id
"""
OLD_COMMIT = """
UPDATE {t} SET status = 'COMMITTED', "submittedAt" = now(), "fabricTxId" = %s, "commitBlock" = 7,
       error = NULL, "errorCode" = NULL, "lockedBy" = NULL, "lockedAt" = NULL, "updatedAt" = now()
 WHERE id = %s AND status = 'LOCKED' AND "lockedBy" = 'old-worker'
"""


def table(s: str) -> str:
    return sql.Identifier(s, "OutboxCommand").as_string(None)


def cli(url: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
    env.update(GXSUBMIT_DATABASE_URL=url, GXSUBMIT_SCHEMA=schema)
    return subprocess.run([sys.executable, "-m", "gxsubmit", "migrate", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def adopt(url: str, schema: str, lschema: str, **kw: Any) -> legacy.AdoptionReport:
    async def go() -> legacy.AdoptionReport:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await legacy.adopt(conn, schema, table(lschema), **kw)

    return run_sync(go())


def remove(url: str, schema: str, lschema: str) -> legacy.RemovalReport:
    async def go() -> legacy.RemovalReport:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await legacy.remove(conn, schema, table(lschema))

    return run_sync(go())


def commands(conn: psycopg.Connection[Any], schema: str) -> dict[str, dict[str, Any]]:
    """legacy id -> the command that runs it."""
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    query = sql.SQL("SELECT k.legacy_id, c.* FROM {s}.gxsubmit_legacy_link AS k "
                    "JOIN {s}.outbox_commands AS c ON c.id = k.command_id")
    cur.execute(query.format(s=sql.Identifier(schema)))
    return {r["legacy_id"]: r for r in cur.fetchall()}


def count_commands(conn: psycopg.Connection[Any], schema: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.outbox_commands").format(sql.Identifier(schema))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else -1


def set_old_state(conn: psycopg.Connection[Any], lschema: str, rid: str, status: str,
                  locked_ago_s: float) -> None:
    """Put a row in a state the old worker left it in."""
    conn.execute(
        f'UPDATE {table(lschema)} SET status = %s, "lockedBy" = %s, '
        '"lockedAt" = now() - make_interval(secs => %s), '
        '"fabricTxId" = CASE WHEN %s = \'COMMITTED\' THEN \'oldtx\' END WHERE id = %s',
        (status, "old-worker" if status == "LOCKED" else None, locked_ago_s, status, rid),
    )


def test_cli_spelling_backfills_once_and_leaves_finished_rows(pg_url: str, schema: str, lschema: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.cursor()
        ids = lp.insert(cur, lschema, [("CREATE_USER", f"pre-{i}", "default", {"userId": f"pre{i}"})
                                       for i in range(6)])
        set_old_state(conn, lschema, ids[2], "COMMITTED", 0)
        set_old_state(conn, lschema, ids[3], "FAILED", 0)
        set_old_state(conn, lschema, ids[4], "LOCKED", 5)       # the old worker is on it
        set_old_state(conn, lschema, ids[5], "LOCKED", 3600)    # left behind by a stopped old worker

    # Exactly the operators' spelling: the shell hands gxsubmit the quoted identifier, resolved through
    # the search_path of the URL (the services' Prisma schema).
    url = url_with_search_path(pg_url, lschema)
    done = cli(url, schema, "--legacy-outbox", '"OutboxCommand"')
    assert done.returncode == 0, done.stderr
    assert "backfill: 2 PENDING rows queued, 2 LOCKED" in done.stdout, done.stdout
    # Again, schema-qualified this time: the same table, nothing taken twice.
    again = cli(pg_url, schema, "--legacy-outbox", f'{lschema}."OutboxCommand"')
    assert again.returncode == 0, again.stderr
    assert "backfill: 0 PENDING rows queued, 0 LOCKED" in again.stdout, again.stdout

    with psycopg.connect(pg_url, autocommit=True) as conn:
        taken = commands(conn, schema)
        assert set(taken) == {ids[0], ids[1], ids[4], ids[5]}
        assert count_commands(conn, schema) == 4
        now = datetime.now(UTC)
        assert taken[ids[4]]["next_attempt_at"] > now + timedelta(seconds=200)   # waits for its lock to age
        assert taken[ids[5]]["next_attempt_at"] <= now + timedelta(seconds=5)    # stale: at once
        rows = lp.legacy_rows(conn, lschema)
        assert rows[ids[2]]["status"] == "COMMITTED" and rows[ids[3]]["status"] == "FAILED"

    bad = cli(url, schema, "--legacy-outbox", "OutboxCommand")   # unquoted folds to lower case, as in SQL
    assert bad.returncode != 0
    assert bad.stderr.count("\n") == 1 and "did you mean" in bad.stderr and '"OutboxCommand"' in bad.stderr


def test_producers_transactions_reach_the_queue_with_their_fields(pg_url: str, schema: str,
                                                                  lschema: str) -> None:
    adopt(pg_url, schema, lschema)
    own_uuid = str(uuid.uuid4())
    with psycopg.connect(pg_url) as conn:
        cur = conn.cursor()
        # svc-identity's transfer: one insert, the row id it returns is a UUID of its own
        lp.insert(cur, lschema, [("TRANSFER_TOKENS", "transfer-1", "default",
                                  {"fromUserId": "a", "toUserId": "b", "amount": 5})], ids=[own_uuid])
        conn.commit()
        # svc-admin's freeze: a batch transaction with the UserProfile update
        conn.execute(f'INSERT INTO "{lschema}"."UserProfile" VALUES (%s, %s, now())', ("p1", "ACTIVE"))
        batch = lp.insert(cur, lschema, [
            ("FREEZE_WALLET", "freeze-p1", "t2", {"userID": "p1", "reason": "r"}),
            ("CREATE_USER", "create-p1", "t2", {"userId": "p1"})], service="svc-admin")
        conn.execute(f'UPDATE "{lschema}"."UserProfile" SET status = %s WHERE "profileId" = %s',
                     ("FROZEN", "p1"))
        conn.commit()
        # a transaction that rolls back leaves nothing behind in either table
        gone = lp.insert(cur, lschema, [("MINT", "mint-x", "default", {"toUserId": "x", "amount": 1})])
        conn.rollback()

    with psycopg.connect(pg_url, autocommit=True) as conn:
        taken = commands(conn, schema)
        assert set(taken) == {own_uuid, *batch}
        assert gone[0] not in lp.legacy_rows(conn, lschema) and count_commands(conn, schema) == 3
        t = taken[own_uuid]
        assert t["id"] == uuid.UUID(own_uuid)   # a UUID row id is the command id as well
        assert (t["tenant_id"], t["service"], t["command_type"], t["request_id"], t["status"]) == (
            "default", "svc-identity", "TRANSFER_TOKENS", "transfer-1", "PENDING")
        assert t["payload"] == {"fromUserId": "a", "toUserId": "b", "amount": 5}
        f = taken[batch[0]]
        assert (f["tenant_id"], f["service"], f["command_type"], f["request_id"]) == (
            "t2", "svc-admin", "FREEZE_WALLET", "freeze-p1")


def test_status_follows_the_command(pg_url: str, schema: str, lschema: str) -> None:
    adopt(pg_url, schema, lschema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.cursor()
        ok, bad, retry = lp.insert(cur, lschema, [(t, f"r-{t}", "default", {"userId": t})
                                                   for t in ("CREATE_USER", "MINT", "FREEZE_WALLET")])

    async def drive() -> None:
        store = await OutboxStore.connect(pg_url, schema=schema, worker_id="w1:org1-admin")
        try:
            got = await store.claim(["CREATE_USER", "MINT", "FREEZE_WALLET"], 10, 30)
            claimed = {c.request_id: c for c in got}
            with psycopg.connect(pg_url, autocommit=True) as conn:
                rows = lp.legacy_rows(conn, lschema)
                assert {rows[i]["status"] for i in (ok, bad, retry)} == {"LOCKED"}
                assert rows[ok]["lockedBy"] == "w1:org1-admin" and rows[ok]["attempts"] == 1
            c = claimed["r-CREATE_USER"]
            await store.record_tx_many([TxRecord(c.id, c.lease_token, b"n" * 24, "tx-ok", "fp")])
            await store.mark_submitted([(c.id, c.lease_token)])
            with psycopg.connect(pg_url, autocommit=True) as conn:
                assert lp.legacy_rows(conn, lschema)[ok]["status"] == "SUBMITTED"
            await store.mark_committed([Committed(c.id, c.lease_token, "tx-ok", 42, "VALID")])
            b = claimed["r-MINT"]
            await store.mark_failed(b.id, b.lease_token, error_code="ENDORSEMENT_FAILED", error="x" * 1500)
            r = claimed["r-FREEZE_WALLET"]
            await store.retry_later(r.id, r.lease_token, error_code="UNAVAILABLE", error="peer down",
                                    delay_s=60)
        finally:
            await store.close()

    run_sync(drive())
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = lp.legacy_rows(conn, lschema)
        done = commands(conn, schema)[ok]
    assert rows[ok]["status"] == "COMMITTED"
    assert (rows[ok]["fabricTxId"], rows[ok]["commitBlock"]) == ("tx-ok", 42)
    # submittedAt is the commit time, as the old worker wrote it (TIMESTAMPTZ(3) rounds to milliseconds)
    assert abs(rows[ok]["submittedAt"] - done["committed_at"]) <= timedelta(milliseconds=1)
    assert rows[ok]["lockedBy"] is None and rows[ok]["errorCode"] is None
    assert rows[bad]["status"] == "FAILED" and rows[bad]["errorCode"] == "ENDORSEMENT_FAILED"
    assert rows[bad]["error"] == "x" * 1000 and rows[bad]["attempts"] == 1
    assert rows[retry]["status"] == "PENDING" and rows[retry]["errorCode"] == "UNAVAILABLE"
    assert rows[retry]["lockedBy"] is None


def test_old_worker_never_gets_an_adopted_row_and_may_finish_its_own(pg_url: str, schema: str,
                                                                     lschema: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.cursor()
        held, retryable, stale = lp.insert(cur, lschema, [
            ("CREATE_USER", "held", "default", {"userId": "h"}),
            ("CREATE_USER", "old-failed", "default", {"userId": "f"}),
            ("CREATE_USER", "stale", "default", {"userId": "s"})])
        set_old_state(conn, lschema, held, "LOCKED", 1)
        set_old_state(conn, lschema, retryable, "FAILED", 0)
        set_old_state(conn, lschema, stale, "LOCKED", 3600)
    adopt(pg_url, schema, lschema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.cursor()
        new = lp.insert(cur, lschema, [("CREATE_USER", f"new-{i}", "default", {"userId": f"n{i}"})
                                       for i in range(3)])
        # The old worker still polls: it gets its own FAILED row (left alone by adoption), none of gxsubmit's.
        # (gxsubmit is not running here: its command for the stale row is still waiting, so the old
        # worker may retake that lock, see below.)
        conn.execute(f'UPDATE {table(lschema)} SET "lockedAt" = now() WHERE id = %s', (stale,))
        got = {r[0] for r in conn.execute(OLD_CLAIM.format(t=table(lschema))).fetchall()}
        assert got == {retryable}
        conn.execute(f'UPDATE {table(lschema)} SET "lockedAt" = now() - interval \'1 hour\' WHERE id = %s',
                     (stale,))
        rows = lp.legacy_rows(conn, lschema)
        assert {rows[i]["status"] for i in new} == {"PENDING"}
        # It finishes the row it held at adoption: gxsubmit's waiting command is withdrawn.
        assert held in commands(conn, schema)
        assert conn.execute(OLD_COMMIT.format(t=table(lschema)), ("oldtx", held)).rowcount == 1
        assert held not in commands(conn, schema)
        assert lp.legacy_rows(conn, lschema)[held]["status"] == "COMMITTED"
        assert set(commands(conn, schema)) == {*new, stale}
        # Its stale lock on a row it held: retaken by it (while gxsubmit has not started the row), gxsubmit
        # waits for the new lock to age.
        assert stale in commands(conn, schema)
        assert commands(conn, schema)[stale]["next_attempt_at"] <= datetime.now(UTC) + timedelta(seconds=5)
        conn.execute(OLD_CLAIM.format(t=table(lschema)))
        assert lp.legacy_rows(conn, lschema)[stale]["lockedBy"] == "old-worker"
        assert commands(conn, schema)[stale]["next_attempt_at"] > datetime.now(UTC) + timedelta(seconds=200)
        # An operator's re-drive of a dead row of the old worker (their SQL, unchanged) queues it here;
        # the same on a row gxsubmit runs is ignored, with a notice.
        conn.execute(f'UPDATE {table(lschema)} SET status = \'FAILED\', attempts = 5 WHERE id = %s',
                     (retryable,))
        assert conn.execute(f'UPDATE {table(lschema)} SET status = \'PENDING\', attempts = 0, error = NULL '
                            'WHERE id = %s', (retryable,)).rowcount == 1
        assert commands(conn, schema)[retryable]["status"] == "PENDING"
        assert conn.execute(f'UPDATE {table(lschema)} SET status = \'FAILED\' WHERE id = %s',
                            (new[0],)).rowcount == 0


def test_a_producer_insert_never_fails_because_of_gxsubmit(pg_url: str, schema: str, lschema: str) -> None:
    adopt(pg_url, schema, lschema)

    async def direct() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await enqueue(conn, command_type="CREATE_USER", payload={"userId": "d"}, schema=schema,
                          request_id="dup-1", service="cli")

    run_sync(direct())
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # Enum drift: production adds values by hand; a value no catalogue route knows is still queued.
        conn.execute(f'ALTER TYPE "{lschema}"."CommandType" ADD VALUE \'GOVT_NEW_THING\'')
        # A constraint a later migration might add that refuses one of the rows of a statement.
        check = sql.SQL("ALTER TABLE {}.outbox_commands ADD CONSTRAINT t_no_bad "
                        "CHECK (request_id <> 'm-bad')")
        conn.execute(check.format(sql.Identifier(schema)))
        cur = conn.cursor()
        dup, text_payload, null_payload, drift = lp.insert(cur, lschema, [
            ("CREATE_USER", "dup-1", "default", {"userId": "d"}),      # request id gxsubmit already has
            ("CREATE_USER", "p-text", "default", "just text"),        # payload not an object
            ("CREATE_USER", "p-null", "default", None),               # JSON null
            ("GOVT_NEW_THING", "drift-1", "default", {"x": 1}),
        ])
        # one statement, one row refused by the constraint: the other is still queued (row by row)
        refused, accepted = lp.insert(cur, lschema, [("MINT", "m-bad", "default", {}),
                                                     ("MINT", "m-good", "default", {})])
        rows = lp.legacy_rows(conn, lschema)
        taken = commands(conn, schema)
    assert rows[dup]["status"] == "FAILED" and rows[dup]["errorCode"] == "GXSUBMIT_DUPLICATE_REQUEST"
    assert "dup-1" in rows[dup]["error"]
    assert {text_payload, null_payload, drift} <= set(taken)
    assert taken[drift]["command_type"] == "GOVT_NEW_THING"
    assert taken[text_payload]["payload"] == "just text"
    assert rows[refused]["status"] == "FAILED" and rows[refused]["errorCode"] == "GXSUBMIT_REJECTED"
    assert "t_no_bad" in rows[refused]["error"]
    assert accepted in taken and rows[accepted]["status"] == "PENDING"

    report = adopt(pg_url, schema, lschema, routed_types=list(lp.COMMAND_TYPES))
    assert report.unrouted_types == ("GOVT_NEW_THING",)
    assert "GOVT_NEW_THING" in "\n".join(report.lines())


def shape(conn: psycopg.Connection[Any], lschema: str) -> tuple[Any, ...]:
    cols = conn.execute(lp.SHAPE, (table(lschema),)).fetchall()
    trig = conn.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                        (table(lschema),)).fetchall()
    return tuple(cols), tuple(trig)


def test_removal_hands_back_and_restores_the_old_shape(pg_url: str, schema: str, lschema: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        before = shape(conn, lschema)
    adopt(pg_url, schema, lschema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.cursor()
        plain, doubt, done, dead = lp.insert(cur, lschema, [
            ("CREATE_USER", f"r-{i}", "default", {"userId": f"u{i}"}) for i in range(4)])

    async def claim() -> tuple[OutboxStore, list[Any]]:
        store = await OutboxStore.connect(pg_url, schema=schema, worker_id="w1:org1-partner-api")
        return store, await store.claim(["CREATE_USER"], 10, 300)

    async def finish(store: OutboxStore, claimed: list[Any]) -> None:
        by_req = {c.request_id: c for c in claimed}
        d, c, f = by_req["r-1"], by_req["r-2"], by_req["r-3"]
        await store.record_tx_many([TxRecord(d.id, d.lease_token, b"n" * 24, "tx-maybe", "fp")])
        await store.mark_committed([Committed(c.id, c.lease_token, "tx-done", 3, "VALID")])
        await store.mark_failed(f.id, f.lease_token, error_code="ENDORSEMENT_FAILED", error="no")
        await store.release([(x.id, x.lease_token) for x in claimed if x.request_id not in ("r-2", "r-3")])
        await store.close()

    store, claimed = run_sync(claim())
    try:
        with pytest.raises(legacy.LegacyError, match="in flight"):
            remove(pg_url, schema, lschema)
    finally:
        run_sync(finish(store, claimed))
    report = remove(pg_url, schema, lschema)
    assert (report.to_pending, report.to_locked, report.withdrawn) == (1, 1, 2)

    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert shape(conn, lschema) == before
        rows = lp.legacy_rows(conn, lschema)
        assert rows[plain]["status"] == "PENDING" and rows[plain]["lockedBy"] is None
        assert rows[doubt]["status"] == "LOCKED" and rows[doubt]["errorCode"] == "GXSUBMIT_IN_DOUBT"
        assert "tx-maybe" in rows[doubt]["error"]
        assert rows[done]["status"] == "COMMITTED" and rows[done]["fabricTxId"] == "tx-done"
        # gxsubmit's dead letter stays dead for the old worker (attempts at its MAX_RETRIES, 5)
        assert (rows[dead]["status"], rows[dead]["errorCode"], rows[dead]["attempts"]) == (
            "FAILED", "ENDORSEMENT_FAILED", 5)
        assert {r["status"] for r in rows.values()} <= {"PENDING", "LOCKED", "COMMITTED", "FAILED"}
        left = conn.execute(sql.SQL("SELECT count(*) FROM pg_proc WHERE pronamespace = %s::regnamespace "
                                    "AND proname LIKE 'gxsubmit_legacy%%'"), (schema,)).fetchone()
        assert left == (0,)
        assert count_commands(conn, schema) == 2                     # the finished ones, kept
        # The old worker takes over: the PENDING row is its at once.
        assert {r[0] for r in conn.execute(OLD_CLAIM.format(t=table(lschema))).fetchall()} == {plain}
        # and producers' rows no longer reach gxsubmit
        lp.insert(conn.cursor(), lschema, [("CREATE_USER", "after", "default", {"userId": "z"})])
        assert count_commands(conn, schema) == 2


def test_adoption_while_producers_and_the_old_worker_run(pg_url: str, schema: str, lschema: str) -> None:
    """Whatever interleaving: every row ends either finished by the old worker or queued here, never both,
    never neither."""
    stop = threading.Event()
    errors: list[BaseException] = []
    inserted = [0]

    def producer() -> None:
        try:
            with psycopg.connect(pg_url) as conn:
                cur = conn.cursor()
                i = 0
                while not stop.is_set():
                    lp.insert(cur, lschema, [("CREATE_USER", f"c-{i}", "default", {"userId": f"c{i}"})])
                    conn.commit()
                    i += 1
                    inserted[0] = i
        except BaseException as exc:
            errors.append(exc)

    def old_worker() -> None:
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                while not stop.is_set():
                    for (rid,) in conn.execute(OLD_CLAIM.format(t=table(lschema))).fetchall():
                        conn.execute(OLD_COMMIT.format(t=table(lschema)), ("oldtx", rid))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=producer), threading.Thread(target=old_worker)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: inserted[0] >= 50, 60, what="rows before adoption")
        adopt(pg_url, schema, lschema)
        at_adoption = inserted[0]
        wait_for(lambda: inserted[0] >= at_adoption + 50, 60, what="rows after adoption")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors

    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = lp.legacy_rows(conn, lschema)
        taken = commands(conn, schema)
        queued = count_commands(conn, schema)
    assert len(rows) == inserted[0] and queued == len(taken)
    by_old = {i for i, r in rows.items() if r["status"] == "COMMITTED" and r["fabricTxId"] == "oldtx"}
    assert by_old and taken, (len(by_old), len(taken))        # both sides had rows
    assert not (by_old & set(taken))                          # never both
    assert by_old | set(taken) == set(rows)                   # never neither
    assert {rows[i]["status"] for i in taken} <= {"PENDING", "LOCKED"}


@pytest.mark.slow  # about 10 s: kept out of the quick subset
def test_one_line_errors_and_nothing_installed(pg_url: str, schema: str, lschema: str) -> None:
    missing = cli(pg_url, schema, "--legacy-outbox", f'{lschema}."Outbox"')
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    assert "no table" in missing.stderr
    wrong = cli(pg_url, schema, "--legacy-outbox", f'{lschema}."UserProfile"')
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert 'no column "id", "tenantId"' in wrong.stderr
    not_adopted = cli(pg_url, schema, "--remove-legacy-outbox", f'{lschema}."OutboxCommand"')
    assert not_adopted.returncode == 1 and "does not adopt" in not_adopted.stderr, not_adopted.stderr

    # A producer transaction left open on the table: the adoption gives up after its lock timeout,
    # says so on one line, and changes nothing (the producer's row is taken by the next run).
    with psycopg.connect(pg_url) as producer:
        open_id = lp.insert(producer.cursor(), lschema, [("MINT", "open-tx", "default", {})])[0]
        busy = cli(pg_url, schema, "--legacy-outbox", f'{lschema}."OutboxCommand"')
        assert busy.returncode == 69 and busy.stderr.count("\n") == 1, busy.stderr
        assert "stayed locked" in busy.stderr
        producer.commit()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert shape(conn, lschema)[1] == ()   # no trigger on the table
    adopt(pg_url, schema, lschema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert open_id in commands(conn, schema)


def test_the_services_table_in_gxsubmits_own_schema(pg_url: str, schema: str) -> None:
    """Both tables in one schema (e.g. both in public): the same triggers, no name clash."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        lp.create(conn, schema)
    adopt(pg_url, schema, schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rid = lp.insert(conn.cursor(), schema, [("MINT", "same-schema", "default", {"toUserId": "x"})])[0]
        assert rid in commands(conn, schema)
    report = remove(pg_url, schema, schema)
    assert report.withdrawn == 1
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert lp.legacy_rows(conn, schema)[rid]["status"] == "PENDING" and count_commands(conn, schema) == 0


def test_a_producer_role_without_grants_on_gxsubmit(pg_url: str, schema: str, lschema: str) -> None:
    """The services' database role may have rights on its own table only: the triggers run as the role
    that installed the adoption, and gxsubmit's role needs no grant on "OutboxCommand" either."""
    role = "gxt_role_" + uuid.uuid4().hex[:12]
    ident = sql.Identifier(role)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(lschema), ident))
            conn.execute(sql.SQL('GRANT INSERT, SELECT, UPDATE ON {}."OutboxCommand" TO {}').format(
                sql.Identifier(lschema), ident))
        adopt(pg_url, schema, lschema)
        with psycopg.connect(pg_url, user=role, autocommit=True) as producer:
            rid = lp.insert(producer.cursor(), lschema, [("MINT", "as-role", "default", {})])[0]
            # and the old worker's statements under that role are still guarded
            assert producer.execute(OLD_CLAIM.format(t=table(lschema))).fetchall() == []
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert commands(conn, schema)[rid]["status"] == "PENDING"
            assert lp.legacy_rows(conn, lschema)[rid]["errorCode"] is None
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_a_status_of_a_later_release_shows_in_progress(pg_url: str, schema: str, lschema: str) -> None:
    """Parallel releases may add a status to outbox_commands: the write-back must not break on it."""
    adopt(pg_url, schema, lschema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rid, other = lp.insert(conn.cursor(), lschema, [("MINT", f"later-{i}", "default", {})
                                                        for i in range(2)])
        s = sql.Identifier(schema)
        conn.execute(sql.SQL("ALTER TABLE {}.outbox_commands DROP CONSTRAINT outbox_commands_status_check")
                     .format(s))
        conn.execute(sql.SQL("UPDATE {}.outbox_commands SET status = CASE request_id WHEN 'later-0' THEN "
                             "'SOMETHING_NEW' ELSE 'SUBMITTED' END").format(s))
        rows = lp.legacy_rows(conn, lschema)
    assert (rows[rid]["status"], rows[other]["status"]) == ("LOCKED", "SUBMITTED")
