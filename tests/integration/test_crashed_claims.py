"""Crashed claims in the store (migration 0009): counted, run alone, FAILED at the limit, reset by requeue."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from gxsubmit.outbox import OutboxStore, enqueue


async def row(conn: psycopg.AsyncConnection[Any], schema: str, rid: uuid.UUID) -> dict[str, Any]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    await cur.execute(sql.SQL("SELECT status, error_code, error, crashed_claims, fabric_tx_id FROM {}."
                              "outbox_commands WHERE id = %s").format(sql.Identifier(schema)), [rid])
    r = await cur.fetchone()
    assert r is not None
    return r


async def test_a_row_that_keeps_crashing_its_worker_fails_and_its_batch_mates_run_alone(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    ids = [(await enqueue(conn, command_type="MINT", payload={"i": i}, schema=schema))[0] for i in range(3)]
    key_next, _ = await enqueue(conn, command_type="MINT", payload={"k": 2}, schema=schema, order_key="k")
    everything = set(ids) | {key_next}
    batch = await store.claim(["MINT"], 10, 300.0)
    assert {c.id for c in batch} == everything and all(c.crashed_claims == 0 for c in batch)
    # the worker dies holding all four: each claim counts as a crash, the rows come back
    assert await store.release_crashed(["w1"], 3) == (4, [])
    assert (await row(conn, schema, ids[0]))["crashed_claims"] == 1
    # one crash changes nothing: they are claimed together again, and the worker dies again
    batch = await store.claim(["MINT"], 10, 300.0)
    assert {c.id for c in batch} == everything and all(c.crashed_claims == 1 for c in batch)
    assert await store.release_crashed(["w1"], 3) == (4, [])
    # from the second, a normal claim leaves them; they come one at a time, oldest first
    assert await store.claim(["MINT"], 10, 300.0) == []
    assert await store.suspects_due(["MINT"]) and not await store.suspects_due(["OTHER"])
    (alone,) = await store.claim_suspect(["MINT"], 300.0)
    assert alone.id == ids[0] and alone.crashed_claims == 2
    assert await store.release_crashed(["w1"], 3) == (0, ["MINT"])
    failed = await row(conn, schema, ids[0])
    assert (failed["status"], failed["error_code"], failed["crashed_claims"]) == ("FAILED", "WORKER_CRASH", 3)
    assert "3 claims" in failed["error"] and "requeue resolves it" not in failed["error"]  # never submitted
    # the others run alone and finish (the keyed one too: nothing before it in its key)
    for expected in [*ids[1:], key_next]:
        (c,) = await store.claim_suspect(["MINT"], 300.0)
        assert c.id == expected
        assert await store.mark_failed(c.id, c.lease_token, error_code="E", error="done")
    # a requeue gives the crashed row a fresh budget, and normal claims take it again
    assert await store.requeue(ids=[ids[0]]) == 1
    assert (await row(conn, schema, ids[0]))["crashed_claims"] == 0
    assert [c.id for c in await store.claim(["MINT"], 10, 300.0)] == [ids[0]]


async def test_a_takeover_of_an_expired_lease_counts_a_crash(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    rid, _ = await enqueue(conn, command_type="MINT", payload={}, schema=schema)
    await store.claim(["MINT"], 1, 300.0)
    expire = "UPDATE {}.outbox_commands SET lease_expires_at = now() - interval '1 s'"
    await conn.execute(sql.SQL(expire).format(sql.Identifier(schema)))
    (c,) = await store.claim(["MINT"], 1, 300.0)
    assert c.id == rid and c.crashed_claims == 1


async def test_a_graceful_hand_back_is_no_crash(conn: Any, schema: str, store: OutboxStore) -> None:
    rid, _ = await enqueue(conn, command_type="MINT", payload={}, schema=schema)
    await store.claim(["MINT"], 1, 300.0)
    assert await store.release_owned(["w1"]) == 1
    assert (await row(conn, schema, rid))["crashed_claims"] == 0


async def test_a_crash_after_submit_does_not_count_and_a_submitted_row_gets_twice_the_limit(
    conn: Any, schema: str, store: OutboxStore
) -> None:
    # A worker killed while the row's copy is with the orderer (SUBMITTED): the row did nothing to it,
    # and its copy may commit. Before, three such kills dead-lettered the row (WORKER_CRASH) while its
    # transaction was VALID on the ledger (seen in the 30-minute soak: 7 rows).
    rid, _ = await enqueue(conn, command_type="MINT", payload={}, schema=schema)
    for _ in range(4):
        (c,) = await store.claim(["MINT"], 1, 300.0)
        await store.mark_submitted([(c.id, c.lease_token)])
        assert await store.release_crashed(["w1"], 3) == (1, [])
    r = await row(conn, schema, rid)
    assert (r["status"], r["crashed_claims"]) == ("PENDING", 0)
    # crashes before Submit count; a row an earlier try submitted fails only at twice the limit
    for n in range(1, 6):
        (c,) = await store.claim(["MINT"], 1, 300.0) or await store.claim_suspect(["MINT"], 300.0)
        assert c.submitted_before
        assert await store.release_crashed(["w1"], 3) == (1, [])
        assert (await row(conn, schema, rid))["crashed_claims"] == n
    (c,) = await store.claim_suspect(["MINT"], 300.0)
    assert await store.release_crashed(["w1"], 3) == (0, ["MINT"])
    r = await row(conn, schema, rid)
    assert (r["status"], r["error_code"], r["crashed_claims"]) == ("FAILED", "WORKER_CRASH", 6)
    assert "may be on the ledger" in r["error"]
