"""The outbox store against a real PostgreSQL: enqueue, claim, leases, fencing, retries, requeue."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from gxsubmit.outbox import (
    ClaimedCommand,
    Committed,
    OutboxListener,
    OutboxStore,
    SchemaNotMigrated,
    SubmittedTx,
    TxRecord,
    _compose,
    enqueue,
    truncate_error,
)


@pytest.fixture
async def store2(pg_url: str, schema: str) -> AsyncIterator[OutboxStore]:
    s = await OutboxStore.connect(pg_url, schema=schema, worker_id="w2")
    yield s
    await s.close()


async def row(conn: psycopg.AsyncConnection[Any], schema: str, id: uuid.UUID) -> dict[str, Any]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    await cur.execute(
        sql.SQL("SELECT * FROM {}.outbox_commands WHERE id = %s").format(sql.Identifier(schema)), [id]
    )
    r = await cur.fetchone()
    assert r is not None
    return r


async def submit_tx(store: OutboxStore, id: uuid.UUID, token: uuid.UUID, *, nonce: bytes, tx_id: str,
                    fp: str = "fp", not_after: datetime | None = None) -> bool:
    """The worker's write-ahead of one row (``mark_submitted_tx``): SUBMITTED with its tx id, stored nonce
    and creator. True when the lease held."""
    return await store.mark_submitted_tx([SubmittedTx(id, token, tx_id, 0, fp, not_after, nonce)]) == {id}


async def expire(conn: psycopg.AsyncConnection[Any], schema: str, id: uuid.UUID) -> None:
    await conn.execute(
        sql.SQL(
            "UPDATE {}.outbox_commands SET lease_expires_at = now() - interval '1 second' WHERE id = %s"
        ).format(sql.Identifier(schema)),
        [id],
    )


async def add(
    conn: psycopg.AsyncConnection[Any], schema: str, n: int, ctype: str = "MINT"
) -> list[uuid.UUID]:
    ids = []
    for i in range(n):
        rid, _ = await enqueue(conn, command_type=ctype, payload={"i": i}, schema=schema)
        ids.append(rid)
    return ids


# -- enqueue ----------------------------------------------------------------------------------------


async def test_enqueue_is_idempotent_per_tenant_and_request(conn: Any, schema: str) -> None:
    a, created_a = await enqueue(conn, command_type="MINT", payload={"x": 1}, request_id="r1", schema=schema)
    b, created_b = await enqueue(conn, command_type="MINT", payload={"x": 2}, request_id="r1", schema=schema)
    c, created_c = await enqueue(
        conn, command_type="MINT", payload={"x": 3}, request_id="r1", tenant_id="other", schema=schema
    )
    assert (created_a, created_b, created_c) == (True, False, True)
    assert a == b != c
    assert (await row(conn, schema, a))["payload"] == {"x": 1}


async def test_enqueue_rolls_back_with_the_producer_transaction(pg_url: str, schema: str, conn: Any) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url) as producer:  # not autocommit
        _, created = await enqueue(producer, command_type="MINT", payload={}, request_id="rb", schema=schema)
        assert created
        await producer.rollback()
        async with producer.transaction():
            kept, _ = await enqueue(producer, command_type="MINT", payload={}, request_id="ok", schema=schema)
    cur = await conn.execute(
        sql.SQL("SELECT request_id FROM {}.outbox_commands").format(sql.Identifier(schema))
    )
    assert [r[0] for r in await cur.fetchall()] == ["ok"]
    assert (await row(conn, schema, kept))["status"] == "PENDING"


async def test_connect_refuses_an_unmigrated_schema(pg_url: str) -> None:
    with pytest.raises(SchemaNotMigrated):
        await OutboxStore.connect(pg_url, schema="gxt_does_not_exist", worker_id="w")


# -- claim ------------------------------------------------------------------------------------------


async def test_other_types_at_the_head_are_not_walked_by_a_claim(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    """Another identity's backlog at the head of the queue (it is down) must not be read by every claim of
    the others, nor a served type with nothing pending make the claim walk the queue (migration 0005)."""
    t = sql.Identifier(schema)
    await conn.execute(
        sql.SQL("INSERT INTO {}.outbox_commands (service, command_type, request_id, payload) "
                "SELECT 'svc', 'MINT', 'head-' || g, '{{}}'::jsonb FROM generate_series(1, 3000) AS g")
        .format(t))
    mine = await add(conn, schema, 5, "CREATE_USER")
    await conn.execute(sql.SQL("ANALYZE {}.outbox_commands").format(t))
    types = ["CREATE_USER", "APPROVE_KYC"]  # APPROVE_KYC has no row at all
    session = await store._get()
    query = b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + store._claim_query(10, session)
    async with session.transaction(force_rollback=True):
        cur = await session.execute(query, {"types": types, "worker_id": "w1", "lease_s": 30.0})
        plan = "\n".join(r[0] for r in await cur.fetchall())
    removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
    assert sum(removed) < 100, plan  # before 0005: 3,000 (every MINT row, on every claim)
    claimed = await store.claim(types, 10, 30.0)
    assert [c.id for c in claimed] == mine
    # Its own long backlog is not read whole either (no sort of every due row of its types per claim).
    await conn.execute(
        sql.SQL("INSERT INTO {}.outbox_commands (service, command_type, request_id, payload) "
                "SELECT 'svc', 'CREATE_USER', 'own-' || g, '{{}}'::jsonb FROM generate_series(1, 3000) AS g")
        .format(t))
    await conn.execute(sql.SQL("ANALYZE {}.outbox_commands").format(t))
    async with session.transaction(force_rollback=True):
        cur = await session.execute(query, {"types": types, "worker_id": "w1", "lease_s": 30.0})
        plan = "\n".join(r[0] for r in await cur.fetchall())
    read = [float(n) for n in re.findall(r"actual rows=([\d.]+)", plan)]
    removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
    assert max(read) <= 20 and sum(removed) < 100, plan


async def test_claim_is_fifo_by_type_and_counts_an_attempt(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    mints = await add(conn, schema, 3, "MINT")
    await add(conn, schema, 2, "CREATE_USER")
    got = await store.claim(["MINT"], 2, 30.0)
    assert [c.id for c in got] == mints[:2]
    assert all(c.attempts == 1 and c.command_type == "MINT" and not c.submitted_before for c in got)
    assert got[0].payload == {"i": 0}
    r = await row(conn, schema, got[0].id)
    assert (r["status"], r["locked_by"], r["lease_token"]) == ("CLAIMED", "w1", got[0].lease_token)
    assert r["lease_expires_at"] > r["locked_at"]
    rest = await store.claim(["MINT", "CREATE_USER"], 10, 30.0)
    assert len(rest) == 3 and mints[2] in {c.id for c in rest}
    assert await store.claim(["MINT", "CREATE_USER"], 10, 30.0) == []  # leases hold


async def test_record_tx_many_stores_each_nonce_and_is_fenced(
    conn: Any, schema: str, store: OutboxStore, store2: OutboxStore
) -> None:
    ids = await add(conn, schema, 3)
    claimed = await store.claim(["MINT"], 10, 30.0)
    assert {c.id for c in claimed} == set(ids)
    a, b, c = claimed
    until = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
    recs = [
        TxRecord(x.id, x.lease_token, bytes([i]) * 24, f"tx{i}", f"fp{i}", until if i == 0 else None)
        for i, x in enumerate(claimed)
    ]
    stale = TxRecord(c.id, uuid.uuid4(), b"z" * 24, "txz", "fpz")  # wrong token: fenced out
    assert await store.record_tx_many([*recs[:2], stale]) == {a.id, b.id}
    assert await store.record_tx_many([]) == set()
    for i, x in enumerate((a, b)):
        r = await row(conn, schema, x.id)
        got = (bytes(r["tx_nonce"]), r["fabric_tx_id"], r["creator_fingerprint"], r["creator_not_after"])
        assert got == (bytes([i]) * 24, f"tx{i}", f"fp{i}", until if i == 0 else None)
    r = await row(conn, schema, c.id)
    assert (r["tx_nonce"], r["fabric_tx_id"]) == (None, None)
    await expire(conn, schema, a.id)
    (taken,) = await store2.claim(["MINT"], 10, 30.0)
    assert taken.id == a.id and taken.tx_nonce == bytes([0]) * 24 and taken.creator_not_after == until
    assert await store.record_tx_many([recs[0]]) == set()  # the old holder lost its lease


async def test_a_new_creator_recorded_without_its_expiry_clears_the_old_expiry(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    # A release from before migration 0004 (after a rollback) records a new creator without touching
    # creator_not_after: the previous certificate's expiry must not stay on the row.
    (rid,) = await add(conn, schema, 1)
    (a,) = await store.claim(["MINT"], 1, 30.0)
    t1, t2 = datetime(2030, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC)
    assert await submit_tx(store, rid, a.lease_token, nonce=b"1" * 24, tx_id="tx1", fp="fpA", not_after=t1)
    assert await submit_tx(store, rid, a.lease_token, nonce=b"2" * 24, tx_id="tx2", fp="fpA",
                           not_after=t1)  # same certificate, new nonce: kept
    assert (await row(conn, schema, rid))["creator_not_after"] == t1
    assert await submit_tx(store, rid, a.lease_token, nonce=b"3" * 24, tx_id="tx3", fp="fpB",
                           not_after=t2)  # this release: the new certificate's expiry
    assert (await row(conn, schema, rid))["creator_not_after"] == t2
    await conn.execute(
        sql.SQL("UPDATE {}.outbox_commands SET tx_nonce = %s, fabric_tx_id = 'tx4', "
                "creator_fingerprint = 'fpC' WHERE id = %s").format(sql.Identifier(schema)),
        [b"4" * 24, rid],
    )  # what a release before 0004 wrote: the new creator, no expiry
    r = await row(conn, schema, rid)
    assert (r["creator_fingerprint"], r["creator_not_after"]) == ("fpC", None)


async def test_expired_lease_is_taken_over_and_old_holder_is_fenced(
    conn: Any, schema: str, store: OutboxStore, store2: OutboxStore
) -> None:
    (rid,) = await add(conn, schema, 1)
    (a,) = await store.claim(["MINT"], 10, 30.0)
    assert await submit_tx(store, rid, a.lease_token, nonce=b"n" * 24, tx_id="tx1")
    assert await store2.claim(["MINT"], 10, 30.0) == []
    await expire(conn, schema, rid)
    (b,) = await store2.claim(["MINT"], 10, 30.0)
    assert b.id == rid and b.lease_token != a.lease_token
    assert b.attempts == 2  # takeover counts an attempt
    assert (b.tx_nonce, b.fabric_tx_id, b.creator_fingerprint, b.submitted_before) == (
        b"n" * 24,
        "tx1",
        "fp",
        True,
    )
    old = a.lease_token
    assert await store.renew([(rid, old)], 30.0) == set()
    assert not await submit_tx(store, rid, old, nonce=b"x" * 24, tx_id="tx2")
    assert await store.mark_submitted([(rid, old)]) == set()
    assert await store.mark_committed([Committed(rid, old, "tx1", 5, "VALID")]) == set()
    assert not await store.retry_later(rid, old, error_code="E", error="e", delay_s=0)
    assert not await store.mark_failed(rid, old, error_code="E", error="e")
    assert await store.release([(rid, old)]) == 0
    r = await row(conn, schema, rid)
    assert (r["status"], r["locked_by"], r["lease_token"], r["fabric_tx_id"]) == (
        "CLAIMED",
        "w2",
        b.lease_token,
        "tx1",
    )
    assert await store2.mark_committed([Committed(rid, b.lease_token, "tx1", 7, "VALID")]) == {rid}
    r = await row(conn, schema, rid)
    assert (r["status"], r["commit_block"], r["validation_code"], r["lease_token"]) == (
        "COMMITTED",
        7,
        "VALID",
        None,
    )


async def test_renew_extends_only_held_leases(conn: Any, schema: str, store: OutboxStore) -> None:
    ids = await add(conn, schema, 2)
    a, b = await store.claim(["MINT"], 10, 5.0)
    before = (await row(conn, schema, a.id))["lease_expires_at"]
    held = await store.renew([(a.id, a.lease_token), (b.id, uuid.uuid4())], 600.0)
    assert held == {a.id}
    assert (await row(conn, schema, a.id))["lease_expires_at"] > before
    assert set(ids) == {a.id, b.id}


async def test_batch_updates_return_exactly_the_held_ids(conn: Any, schema: str, store: OutboxStore) -> None:
    """Every lease held, some lost, none held, and an id given twice (the statement only sends ids
    back when some lease was lost)."""
    await add(conn, schema, 4)
    a, b, c, d = await store.claim(["MINT"], 10, 30.0)
    lost = uuid.uuid4()
    assert await store.renew([(a.id, a.lease_token), (b.id, b.lease_token)], 60.0) == {a.id, b.id}
    assert await store.renew([(a.id, a.lease_token), (a.id, a.lease_token)], 60.0) == {a.id}
    assert await store.renew([(a.id, lost), (b.id, lost)], 60.0) == set()
    assert await store.mark_submitted([(a.id, a.lease_token), (b.id, lost), (c.id, c.lease_token)]) == {
        a.id,
        c.id,
    }
    recs = [TxRecord(x.id, x.lease_token, b"n" * 24, f"tx-{x.seq}", "fp") for x in (a, b)]
    assert await store.record_tx_many([*recs, TxRecord(c.id, lost, b"n" * 24, "t", "fp")]) == {a.id, b.id}
    done = [Committed(x.id, x.lease_token, None, None, "VALID") for x in (a, b, c)]
    assert await store.mark_committed([*done, Committed(d.id, lost, None, 9, "VALID")]) == {a.id, b.id, c.id}
    assert await store.mark_committed(done) == set()  # committed rows hold no lease any more
    assert (await row(conn, schema, d.id))["status"] == "CLAIMED"


async def test_claim_returns_payloads_and_columns_as_stored(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    """Payloads come back equal to json.loads of the stored jsonb, big integers included."""
    payloads: list[Any] = [
        {"amount": 123456789012345678901234567890, "neg": -9223372036854775809, "ok": 2**63 - 1},
        {"id": "12345678901234567890123", "f": 0.1, "e": 1.5e-300, "u": "ü€😀", "n": None, "b": [True, {}]},
        [1, "two", [3.5]],
        "text",
        42,
    ]
    for i, p in enumerate(payloads):
        await enqueue(conn, command_type="MINT", payload=p, request_id=f"p{i}", schema=schema)
    got = await store.claim(["MINT"], 10, 30.0)
    assert [c.payload for c in got] == payloads
    assert [type(v) for v in got[0].payload.values()] == [int, int, int]
    first = got[0]
    assert type(first) is ClaimedCommand
    assert (first.tenant_id, first.service, first.request_id) == ("default", "cli", "p0")
    assert first.tx_nonce is None and not first.submitted_before
    assert first.created_at.utcoffset() is not None
    assert abs((datetime.now(UTC) - first.created_at).total_seconds()) < 3600


async def test_retry_later_waits_keeps_nonce_and_burns_on_request(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    (rid,) = await add(conn, schema, 1)
    (a,) = await store.claim(["MINT"], 1, 30.0)
    until = datetime(2031, 1, 1, tzinfo=UTC)
    assert await submit_tx(store, rid, a.lease_token, nonce=b"a" * 24, tx_id="txa", not_after=until)
    assert await store.retry_later(
        rid, a.lease_token, error_code="GATEWAY_UNAVAILABLE", error="down", delay_s=3600
    )
    assert await store.claim(["MINT"], 1, 30.0) == []  # not due yet
    r = await row(conn, schema, rid)
    assert (r["status"], r["error_code"], r["tx_nonce"], r["lease_token"]) == (
        "PENDING",
        "GATEWAY_UNAVAILABLE",
        b"a" * 24,
        None,
    )
    stats = await store.stats()
    assert stats.retrying_by_code == {"GATEWAY_UNAVAILABLE": 1} and stats.failed_by_code == {}
    await conn.execute(
        sql.SQL("UPDATE {}.outbox_commands SET next_attempt_at = now() WHERE id = %s").format(
            sql.Identifier(schema)
        ),
        [rid],
    )
    (b,) = await store.claim(["MINT"], 1, 30.0)
    assert (b.attempts, b.tx_nonce, b.fabric_tx_id, b.submitted_before, b.creator_not_after) == (
        2, b"a" * 24, "txa", True, until)
    assert await store.retry_later(
        rid, b.lease_token, error_code="MVCC_READ_CONFLICT", error="c", delay_s=0, burn_nonce=True
    )
    (c,) = await store.claim(["MINT"], 1, 30.0)
    assert (c.attempts, c.tx_nonce, c.fabric_tx_id, c.submitted_before, c.creator_fingerprint,
            c.creator_not_after) == (3, None, None, False, None, None)


async def test_failed_is_terminal_until_requeued(conn: Any, schema: str, store: OutboxStore) -> None:
    (rid,) = await add(conn, schema, 1)
    (a,) = await store.claim(["MINT"], 1, 30.0)
    assert await submit_tx(store, rid, a.lease_token, nonce=b"k" * 24, tx_id="txk")
    assert await store.mark_failed(rid, a.lease_token, error_code="CHAINCODE_ERROR", error="nope")
    assert await store.claim(["MINT"], 1, 30.0) == []
    await expire(conn, schema, rid)  # no lease to expire: still not claimable
    assert await store.claim(["MINT"], 1, 30.0) == []
    stats = await store.stats()
    assert stats.by_status["FAILED"] == 1 and stats.failed_by_code == {"CHAINCODE_ERROR": 1}
    assert (await store.stats()).retrying_by_code == {}  # FAILED is finished, not retrying
    assert await store.requeue(ids=[uuid.uuid4()]) == 0
    assert await store.requeue(ids=[rid]) == 1
    (b,) = await store.claim(["MINT"], 1, 30.0)
    assert b.attempts == 1  # a fresh budget
    assert b.tx_nonce == b"k" * 24  # failed without a definite INVALID commit: same tx id next time
    r = await row(conn, schema, rid)
    assert (r["error_code"], r["error"]) == (None, None)


async def test_requeue_burns_the_nonce_only_after_an_invalid_commit(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    ids = await add(conn, schema, 3)
    claimed = await store.claim(["MINT"], 3, 30.0)
    for c in claimed:
        assert await submit_tx(store, c.id, c.lease_token, nonce=bytes(24), tx_id=f"tx-{c.seq}",
                               not_after=datetime(2031, 1, 1, tzinfo=UTC))
    x, y, z = claimed
    await store.mark_failed(
        x.id,
        x.lease_token,
        error_code="ENDORSEMENT_POLICY_FAILURE",
        error="e",
        validation_code="ENDORSEMENT_POLICY_FAILURE",
    )
    await store.mark_failed(y.id, y.lease_token, error_code="IN_DOUBT", error="gave up")
    await store.mark_committed([Committed(z.id, z.lease_token, None, 3, "VALID")])
    assert await store.requeue(all_failed=True) == 2  # COMMITTED is never requeued
    rows = {i: await row(conn, schema, i) for i in ids}
    assert rows[x.id]["tx_nonce"] is None and rows[x.id]["fabric_tx_id"] is None
    assert rows[x.id]["creator_not_after"] is None
    assert rows[y.id]["tx_nonce"] == bytes(24) and rows[y.id]["fabric_tx_id"] == f"tx-{y.seq}"
    assert rows[y.id]["creator_not_after"] == datetime(2031, 1, 1, tzinfo=UTC)
    assert rows[z.id]["status"] == "COMMITTED" and rows[z.id]["fabric_tx_id"] == f"tx-{z.seq}"


async def test_requeue_by_error_code(conn: Any, schema: str, store: OutboxStore) -> None:
    await add(conn, schema, 3)
    a, b, c = await store.claim(["MINT"], 3, 30.0)
    await store.mark_failed(a.id, a.lease_token, error_code="ROLE_DENIED", error="e")
    await store.mark_failed(b.id, b.lease_token, error_code="ROLE_DENIED", error="e")
    await store.mark_failed(c.id, c.lease_token, error_code="BAD_REQUEST", error="e")
    assert await store.requeue(error_code="ROLE_DENIED") == 2
    assert (await store.stats()).failed_by_code == {"BAD_REQUEST": 1}
    assert await store.requeue() == 0  # no selector: nothing


async def test_release_hands_back_without_burning_an_attempt(
    conn: Any, schema: str, store: OutboxStore, store2: OutboxStore
) -> None:
    await add(conn, schema, 2)
    got = await store.claim(["MINT"], 2, 300.0)
    assert await submit_tx(store, got[0].id, got[0].lease_token, nonce=b"r" * 24, tx_id="txr", fp="f")
    assert await store.release([(c.id, c.lease_token) for c in got]) == 2
    again = await store2.claim(["MINT"], 2, 300.0)  # immediately, by another worker
    assert [c.id for c in again] == [c.id for c in got]
    assert [c.attempts for c in again] == [1, 1]
    assert again[0].tx_nonce == b"r" * 24


async def test_fail_unroutable_only_touches_pending_rows_of_unknown_types(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    await add(conn, schema, 2, "MINT")
    (odd,) = await add(conn, schema, 1, "REQUEST_RELATIONSHIP")
    (held,) = await add(conn, schema, 1, "OLD_TYPE")
    await store.claim(["OLD_TYPE"], 1, 30.0)
    assert await store.fail_unroutable(["MINT", "CREATE_USER"]) == 1
    r = await row(conn, schema, odd)
    assert (r["status"], r["error_code"]) == ("FAILED", "UNROUTABLE")
    assert "REQUEST_RELATIONSHIP" in r["error"]
    assert (await row(conn, schema, held))["status"] == "CLAIMED"


async def test_stats(conn: Any, schema: str, store: OutboxStore) -> None:
    empty = await store.stats()
    assert empty.oldest_pending_age_s is None and sum(empty.by_status.values()) == 0
    await add(conn, schema, 3, "MINT")
    await add(conn, schema, 1, "CREATE_USER")
    await store.claim(["CREATE_USER"], 1, 30.0)
    s = await store.stats()
    assert s.by_status["PENDING"] == 3 and s.by_status["CLAIMED"] == 1
    assert s.by_status_type == {("PENDING", "MINT"): 3, ("CLAIMED", "CREATE_USER"): 1}
    assert s.oldest_pending_age_s is not None and s.oldest_pending_age_s >= 0.0


async def test_stats_count_committed_rows_exactly_only_in_a_small_table(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    """The supervisor refreshes these every few seconds: past the limit the retained history is not read
    (its count is the planner's estimate), while unfinished and FAILED rows stay exact."""
    t = sql.Identifier(schema)
    done = await add(conn, schema, 4, "MINT")
    failed = await add(conn, schema, 1, "MINT")
    await add(conn, schema, 2, "CREATE_USER")
    await conn.execute(
        sql.SQL("UPDATE {}.outbox_commands SET status = 'COMMITTED', committed_at = now() WHERE id = ANY(%s)")
        .format(t), [done])
    await conn.execute(
        sql.SQL("UPDATE {}.outbox_commands SET status = 'FAILED', error_code = 'CHAINCODE_ERROR' "
                "WHERE id = %s").format(t), [failed[0]])
    await conn.execute(sql.SQL("ANALYZE {}.outbox_commands").format(t))  # the estimate: 7 rows
    exact = await store.stats(exact_below=1000)
    assert not exact.committed_estimated
    assert exact.by_status_type[("COMMITTED", "MINT")] == 4 and exact.by_status["COMMITTED"] == 4
    # Three more COMMITTED rows the estimate has not seen yet: the exact count sees them, the estimate not.
    more = await add(conn, schema, 3, "MINT")
    await conn.execute(
        sql.SQL("UPDATE {}.outbox_commands SET status = 'COMMITTED', committed_at = now() WHERE id = ANY(%s)")
        .format(t), [more])
    assert (await store.stats(exact_below=1000)).by_status["COMMITTED"] == 7
    large = await store.stats(exact_below=5)
    assert large.committed_estimated
    assert large.by_status == {"PENDING": 2, "CLAIMED": 0, "SUBMITTED": 0, "COMMITTED": 4, "FAILED": 1}
    assert ("COMMITTED", "MINT") not in large.by_status_type
    assert large.by_status_type == {("PENDING", "CREATE_USER"): 2, ("FAILED", "MINT"): 1}
    assert large.failed_by_code == {"CHAINCODE_ERROR": 1} and large.oldest_pending_age_s is not None


async def test_stats_of_a_large_table_do_not_read_its_history(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    """The COMMITTED branch of the statement is gated by a one-time filter: past the limit its scan never
    starts (EXPLAIN ANALYZE on the store's own session, whose settings also rule out parallel workers and
    JIT compilation, which a large table's plan would pay for even with the scan skipped)."""
    await add(conn, schema, 3, "MINT")
    await conn.execute(sql.SQL("ANALYZE {}.outbox_commands").format(sql.Identifier(schema)))
    session = await store._get()  # the store's connection, with its session settings
    query = sql.SQL("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) ") + _compose("stats", schema)
    for exact_below, scanned in ((1000, True), (2, False)):
        cur = await session.execute(query, {"exact_below": exact_below})
        plan = "\n".join(r[0] for r in await cur.fetchall())
        lines = plan.splitlines()
        at = next(i for i, line in enumerate(lines) if "status = 'COMMITTED'" in line)
        scan = lines[at - 1]  # the node the COMMITTED filter belongs to
        assert "Scan" in scan, plan
        assert ("never executed" not in scan) is scanned, plan
    settings = await (await session.execute("SELECT current_setting('jit'), "
                                            "current_setting('max_parallel_workers_per_gather')")).fetchone()
    assert settings == ("off", "0")  # both would start work for a large table's skipped branch


async def test_prune_deletes_only_old_committed_rows_in_batches(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    assert (await store.prune(30 * 86400.0))[0] == 0  # an empty table
    t = sql.Identifier(schema)

    async def aged(n: int, status: str, created_days: float, committed_days: float | None) -> list[uuid.UUID]:
        ids = await add(conn, schema, n)
        await conn.execute(
            sql.SQL("UPDATE {}.outbox_commands SET status = %s, "
                    "created_at = now() - make_interval(secs => %s * 86400), "
                    "committed_at = now() - make_interval(secs => %s * 86400) WHERE id = ANY(%s)").format(t),
            [status, created_days, committed_days, ids])
        return ids

    old = await aged(7, "COMMITTED", 40, 40)
    kept = [
        *await aged(1, "FAILED", 40, None),  # a dead letter waits for an operator, whatever its age
        *await aged(1, "PENDING", 40, None),
        *await aged(1, "COMMITTED", 40, 1),  # created long ago, committed yesterday: not yet
        *await aged(2, "COMMITTED", 0.01, 0.01),
    ]
    would, _ = await store.prune(30 * 86400.0, dry_run=True)
    assert would == 7 and len(await remaining(conn, schema)) == 12

    seen: list[int] = []
    n, cutoff = await store.prune(30 * 86400.0, batch=2, progress=seen.append)
    assert n == 7 and seen == [2, 4, 6, 7]
    assert (datetime.now(UTC) - cutoff).days == 30
    left = await remaining(conn, schema)
    assert set(left) == set(kept) and not set(left) & set(old)
    assert (await store.prune(30 * 86400.0))[0] == 0
    assert (await store.prune(0.005 * 86400.0))[0] == 3  # the yesterday and the recent ones


async def remaining(conn: Any, schema: str) -> list[uuid.UUID]:
    cur = await conn.execute(sql.SQL("SELECT id FROM {}.outbox_commands").format(sql.Identifier(schema)))
    return [r[0] for r in await cur.fetchall()]


async def test_long_and_odd_errors_are_stored_truncated(conn: Any, schema: str, store: OutboxStore) -> None:
    (rid,) = await add(conn, schema, 1)
    (a,) = await store.claim(["MINT"], 1, 30.0)
    text = "é" * 1500 + "\x00" + "\ud800" + "z" * 10
    assert await store.mark_failed(rid, a.lease_token, error_code="X" * 500, error=text)
    r = await row(conn, schema, rid)
    assert len(r["error"].encode()) <= 2000 and r["error"].startswith("é" * 900)
    assert len(r["error_code"].encode()) <= 64


@given(st.text(max_size=3000), st.integers(min_value=1, max_value=2500))
def test_truncate_error_never_splits_a_character(text: str, limit: int) -> None:
    out = truncate_error(text, limit)
    data = out.encode("utf-8")  # raises if a lone surrogate survived
    assert len(data) <= max(limit, len("…".encode()))
    assert "\x00" not in out
    clean = text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()
    if len(clean.encode()) <= limit:
        assert out == clean
    else:
        assert clean.startswith(out[:-1])


# -- notify -----------------------------------------------------------------------------------------


async def test_notify_wakes_a_waiting_claimer(pg_url: str, schema: str, conn: Any) -> None:
    notifier = await OutboxListener.connect(pg_url)
    try:
        waiter = asyncio.create_task(notifier.wait(timeout=60.0))
        fallback = asyncio.create_task(asyncio.sleep(30.0))  # what a poll-only worker would wait
        await asyncio.sleep(0)  # let the waiter start listening before the insert
        await enqueue(conn, command_type="MINT", payload={}, schema=schema)
        done, _ = await asyncio.wait({waiter, fallback}, return_when=asyncio.FIRST_COMPLETED)
        assert waiter in done and fallback not in done
        assert waiter.result() is True
        fallback.cancel()
    finally:
        await notifier.close()


async def test_a_rolled_back_insert_does_not_notify_a_committed_one_does(pg_url: str, schema: str) -> None:
    # One listener connection, checked with the raw notifications so other schemas' inserts on a
    # shared server cannot confuse the assertion.
    async with (
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(pg_url) as producer,
    ):
        await listener.execute("LISTEN gxsubmit")
        await enqueue(producer, command_type="ROLLED_BACK_TYPE", payload={}, schema=schema)
        await producer.rollback()
        await enqueue(producer, command_type="COMMITTED_TYPE", payload={}, schema=schema)
        await producer.commit()
        seen: list[str] = []
        async for n in listener.notifies(timeout=30.0):
            seen.append(n.payload)
            if n.payload == f"{schema}:COMMITTED_TYPE":
                break
        assert f"{schema}:COMMITTED_TYPE" in seen and f"{schema}:ROLLED_BACK_TYPE" not in seen


#: A NOTIFY payload without a schema (the trigger before migration 0003) wakes every listener of the
#: server by design, and one test here sends one; the tests that check a wake-up does NOT come run in one
#: pytest-xdist worker with it, or its payload lands inside their window.
_NOTIFY_ABSENCE = pytest.mark.xdist_group("notify-absence")


@_NOTIFY_ABSENCE
async def test_a_worker_wakes_only_for_its_own_schema_and_types(pg_url: str, schema: str, conn: Any) -> None:
    from dbutil import drop_schema, migrate_schema, new_schema_name

    other = new_schema_name()
    migrate_schema(pg_url, other)
    notifier = await OutboxListener.connect(pg_url, schema=schema, types=["MINT", "FREEZE_WALLET"])
    try:
        # Inserts of another identity's type, and of its own type in another schema on the same server
        await enqueue(conn, command_type="CREATE_USER", payload={}, schema=schema)
        await enqueue(conn, command_type="MINT", payload={}, schema=other)
        # ... do not wake it (an absence: bounded by the wait's own timeout, which a wake-up would cut short)
        assert await notifier.wait(timeout=1.0) is False
        # Its own type in its own schema does, and so does a type-only payload (the trigger before 0003)
        await enqueue(conn, command_type="FREEZE_WALLET", payload={}, schema=schema)
        assert await notifier.wait(timeout=30.0) is True
        await conn.execute("SELECT pg_notify('gxsubmit', 'MINT')")
        assert await notifier.wait(timeout=30.0) is True
        # One commit's notifications arrive together: a wanted one followed by others still wakes it
        await conn.execute(
            "SELECT pg_notify('gxsubmit', %s), pg_notify('gxsubmit', %s), pg_notify('gxsubmit', %s)",
            (f"{schema}:MINT", f"{schema}:CREATE_USER", f"{other}:MINT"),
        )
        assert await notifier.wait(timeout=30.0) is True
    finally:
        await notifier.close()
        drop_schema(pg_url, other)


async def test_counted_attempts_leave_out_retries_that_do_not_count(
    conn: Any, schema: str, store: OutboxStore, store2: OutboxStore
) -> None:
    # attempts counts claims (the backoff grows with it); counted_attempts is what max_attempts limits.
    (rid,) = await add(conn, schema, 1)

    async def claim(s: OutboxStore = store) -> ClaimedCommand:
        (c,) = await s.claim(["MINT"], 1, 300.0)
        return c

    a = await claim()
    assert (a.attempts, a.counted_attempts) == (1, 1)
    assert await store.retry_later(rid, a.lease_token, error_code="GATEWAY_UNAVAILABLE", error="down",
                                   delay_s=0, counts=False)
    b = await claim()
    assert (b.attempts, b.counted_attempts) == (2, 1)
    assert await store.retry_later(rid, b.lease_token, error_code="DEADLINE_EXCEEDED", error="t", delay_s=0)
    c = await claim()
    assert (c.attempts, c.counted_attempts) == (3, 2)
    assert await store.release([(rid, c.lease_token)]) == 1  # shutdown hand-back: neither counts
    d = await claim()
    assert (d.attempts, d.counted_attempts) == (3, 2)
    assert await store2.release_owned(["w1"]) == 1  # a crash counts
    e = await claim(store2)
    assert (e.attempts, e.counted_attempts) == (4, 3)
    assert await store2.mark_failed(rid, e.lease_token, error_code="E", error="e")
    assert await store.requeue(ids=[rid]) == 1
    f = await claim()
    assert (f.attempts, f.counted_attempts) == (1, 1)
    assert (await row(conn, schema, rid))["counted_attempts"] == 1


async def test_release_owned_hands_back_rows_of_exited_workers(
    conn: Any, schema: str, store: OutboxStore, store2: OutboxStore
) -> None:
    await add(conn, schema, 3)
    mine = await store.claim(["MINT"], 2, 300.0)
    (other,) = await store2.claim(["MINT"], 1, 300.0)
    await store.mark_submitted([(mine[0].id, mine[0].lease_token)])
    assert await store2.release_owned(["w1", "no-such-worker"]) == 2
    assert (await row(conn, schema, other.id))["status"] == "CLAIMED"
    again = await store2.claim(["MINT"], 5, 300.0)
    assert [c.id for c in again] == [c.id for c in mine]
    assert [c.attempts for c in again] == [2, 2]  # the crashed try counts
    assert again[0].submitted_before
    assert not await store.mark_failed(mine[0].id, mine[0].lease_token, error_code="E", error="e")


# -- order keys (migration 0007) --------------------------------------------------------------------


async def _keyed(conn: Any, schema: str, items: list[tuple[str, str | None]], tenant: str = "default",
                 ctype: str = "MINT") -> list[uuid.UUID]:
    ids = []
    for tag, key in items:
        rid, _ = await enqueue(conn, command_type=ctype, payload={"t": tag}, schema=schema, order_key=key,
                               tenant_id=tenant)
        ids.append(rid)
    return ids


async def test_rows_of_one_order_key_are_claimed_one_at_a_time_in_order(
    conn: Any, schema: str, store: OutboxStore, store2: OutboxStore
) -> None:
    a, b, c, d, e = await _keyed(conn, schema, [("a", "k1"), ("b", "k1"), ("c", None), ("d", "k2"),
                                                ("e", "k1")])
    (x,) = await _keyed(conn, schema, [("x", "k1")], tenant="other")  # keys are per tenant
    got = {r.id: r for r in await store.claim(["MINT"], 10, 300.0)}
    assert set(got) == {a, c, d, x}
    assert await store2.claim(["MINT"], 10, 300.0) == []  # b and e wait, whoever asks
    # A retry keeps the key held: b still waits behind a.
    assert await store.retry_later(a, got[a].lease_token, error_code="T", error="t", delay_s=0)
    (a2,) = await store2.claim(["MINT"], 10, 300.0)
    assert a2.id == a
    assert await store2.mark_committed([Committed(a, a2.lease_token, "tx-a", 1, "VALID")]) == {a}
    (b1,) = await store.claim(["MINT"], 10, 300.0)
    assert b1.id == b
    # A FAILED row does not hold the key.
    assert await store.mark_failed(b, b1.lease_token, error_code="CHAINCODE_ERROR", error="no")
    (e1,) = await store.claim(["MINT"], 10, 300.0)
    assert e1.id == e


@_NOTIFY_ABSENCE
async def test_finishing_a_keyed_row_wakes_the_worker_of_the_next_one(
    pg_url: str, conn: Any, schema: str, store: OutboxStore
) -> None:
    # The next row of the key is another identity's type: its worker hears of it by NOTIFY, not at
    # its next fallback poll. Committing, failing, and the supervisor's unroutable sweep all wake it.
    first = await _keyed(conn, schema, [("1", "k")])
    await _keyed(conn, schema, [("2", "k")], ctype="FREEZE_WALLET")
    first2 = await _keyed(conn, schema, [("3", "j")])
    await _keyed(conn, schema, [("4", "j")], ctype="FREEZE_WALLET")
    gone = await _keyed(conn, schema, [("5", "u")], ctype="NO_ROUTE")
    await _keyed(conn, schema, [("6", "u")], ctype="FREEZE_WALLET")
    claimed = {c.id: c for c in await store.claim(["MINT"], 10, 300.0)}
    assert set(claimed) == {first[0], first2[0]} and await store.claim(["FREEZE_WALLET"], 10, 300.0) == []

    async def woken_by(finish: Any) -> bool:
        notifier = await OutboxListener.connect(pg_url, schema=schema, types=["FREEZE_WALLET"])
        try:
            await finish()
            return await notifier.wait(timeout=10.0)
        finally:
            await notifier.close()

    c1, c2 = claimed[first[0]], claimed[first2[0]]
    assert await woken_by(lambda: store.mark_committed([Committed(c1.id, c1.lease_token, "t", 1, "VALID")]))
    assert await woken_by(lambda: store.mark_failed(c2.id, c2.lease_token, error_code="E", error="e"))
    assert await woken_by(lambda: store.fail_unroutable(["MINT", "FREEZE_WALLET"]))
    assert (await row(conn, schema, gone[0]))["error_code"] == "UNROUTABLE"
    assert {c.payload["t"] for c in await store.claim(["FREEZE_WALLET"], 10, 300.0)} == {"2", "4", "6"}
    # Rows without a key wake nobody (no NOTIFY from a plain completion).
    (plain,) = await add(conn, schema, 1)
    (p1,) = await store.claim(["MINT"], 10, 300.0)
    assert p1.id == plain
    notifier = await OutboxListener.connect(pg_url, schema=schema, types=["FREEZE_WALLET"])
    try:
        assert await store.mark_committed([Committed(plain, p1.lease_token, "t", 2, "VALID")]) == {plain}
        assert await notifier.wait(timeout=0.5) is False
    finally:
        await notifier.close()
