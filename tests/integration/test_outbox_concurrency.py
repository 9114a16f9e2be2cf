"""Concurrent claimers never share a row; every row is claimed exactly once while leases hold."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
from dbutil import run_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql

from gxsubmit.outbox import Committed, OutboxStore, SubmittedTx, enqueue

TYPES = ["MINT", "CREATE_USER"]


def _fill(pg_url: str, schema: str, n: int, *, keys: int = 0) -> None:
    """``n`` rows, the two types alternating; with ``keys``, four rows in five get one of that many order
    keys, interleaved (a key's rows are ``keys`` apart, so an odd count gives each key both types)."""
    t = sql.Identifier(schema, "outbox_commands")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(t))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (service, command_type, request_id, payload, order_key) "
                "SELECT 'test', (ARRAY['MINT','CREATE_USER'])[1 + g %% 2], 'r' || g, '1', "
                "CASE WHEN %s > 0 AND g %% 5 <> 0 THEN 'key-' || (g %% greatest(%s, 1)) END "
                "FROM generate_series(1, %s) AS g"
            ).format(t),
            [keys, keys, n],
        )


def _run_children(script: str, pg_url: str, schema: str, tmp_path: Path, n: int) -> list[dict[str, Any]]:
    """Start ``n`` processes of ``script`` (argv: url, schema, out file, go file, seed), release them at
    once, and return what each wrote."""
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, pg_url, schema, str(tmp_path / f"out{i}.json"),
                          str(go), str(i)])
        for i in range(n)
    ]
    try:
        go.touch()
        for p in procs:
            assert p.wait(timeout=120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(n)]


def _all_ids(pg_url: str, schema: str) -> list[tuple[uuid.UUID, str, int]]:
    with psycopg.connect(pg_url) as conn:
        cur = conn.execute(
            sql.SQL("SELECT id, status, attempts FROM {}").format(sql.Identifier(schema, "outbox_commands"))
        )
        return cur.fetchall()


# -- separate OS processes ----------------------------------------------------------------------------

CHILD = r"""
import asyncio, json, os, random, sys, time
from pathlib import Path
from gxsubmit.outbox import Committed, OutboxStore

url, schema, out, go, seed = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])

async def main():
    rng = random.Random(seed)
    store = await OutboxStore.connect(url, schema=schema, worker_id=f"p{seed}")
    deadline = time.monotonic() + 60
    while not go.exists():                      # start together
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    claimed, rejected, empty = [], 0, 0
    while empty < 3 and time.monotonic() < deadline:
        got = await store.claim(["MINT", "CREATE_USER"], rng.randint(1, 100), 300.0)
        if not got:
            empty += 1
            continue
        empty = 0
        claimed += [str(c.id) for c in got]
        done = await store.mark_committed([Committed(c.id, c.lease_token, None, 1, "VALID") for c in got])
        rejected += len(got) - len(done)
    await store.close()
    out.write_text(json.dumps({"claimed": claimed, "rejected": rejected}))

asyncio.run(main())
"""


def test_processes_never_claim_the_same_row(pg_url: str, schema: str, tmp_path: Path) -> None:
    n_procs, per_proc = 4, 2000
    _fill(pg_url, schema, n_procs * per_proc)
    results = _run_children(CHILD, pg_url, schema, tmp_path, n_procs)
    claimed = [c for r in results for c in r["claimed"]]
    assert sum(r["rejected"] for r in results) == 0
    assert len(claimed) == len(set(claimed)) == n_procs * per_proc
    rows = _all_ids(pg_url, schema)
    assert {str(i) for i, _, _ in rows} == set(claimed)
    assert {(s, a) for _, s, a in rows} == {("COMMITTED", 1)}
    assert sum(1 for r in results if r["claimed"]) >= 2  # they really ran concurrently


# -- property: concurrent connections, random batch sizes ---------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_rows=st.integers(min_value=0, max_value=300),
    batches=st.lists(st.integers(min_value=1, max_value=64), min_size=2, max_size=5),
)
def test_concurrent_claimers_partition_the_rows(
    pg_url: str, schema: str, n_rows: int, batches: list[int]
) -> None:
    _fill(pg_url, schema, n_rows)

    async def claimer(store: OutboxStore, batch: int) -> list[uuid.UUID]:
        mine: list[uuid.UUID] = []
        while True:
            got = await store.claim(TYPES, batch, 300.0)
            if not got:
                return mine
            mine += [c.id for c in got]

    async def go() -> list[list[uuid.UUID]]:
        stores = [
            await OutboxStore.connect(pg_url, schema=schema, worker_id=f"w{i}") for i in range(len(batches))
        ]
        try:
            return list(await asyncio.gather(*(claimer(s, b) for s, b in zip(stores, batches, strict=True))))
        finally:
            for s in stores:
                await s.close()

    parts = run_sync(go())
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == n_rows
    assert {s for _, s, _ in _all_ids(pg_url, schema)} <= {"CLAIMED"}


# -- stateful model: leases, expiry, takeover and the fence -------------------------------------------


class LeaseMachine(RuleBasedStateMachine):
    """Three workers against one schema; the model tracks who holds which row with which token."""

    def __init__(self, pg_url: str, schema: str) -> None:
        super().__init__()
        self.url, self.schema = pg_url, schema
        self.loop = asyncio.new_event_loop()
        _fill(pg_url, schema, 0)
        self.conn = psycopg.connect(pg_url, autocommit=True)
        self.aconn = self.run(psycopg.AsyncConnection.connect(pg_url, autocommit=True))
        self.stores = [
            self.run(OutboxStore.connect(pg_url, schema=schema, worker_id=f"w{i}")) for i in range(3)
        ]
        self.pending: set[uuid.UUID] = set()  # claimable now
        self.held: dict[uuid.UUID, tuple[int, uuid.UUID]] = {}  # row -> (worker, token), lease valid
        self.expired: dict[uuid.UUID, tuple[int, uuid.UUID]] = {}  # lease expired, not yet taken over
        self.stale: list[tuple[int, uuid.UUID, uuid.UUID]] = []  # (worker, row, token) that lost the row
        self.done: set[uuid.UUID] = set()
        self.attempts: dict[uuid.UUID, int] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for s in self.stores:
            self.run(s.close())
        self.run(self.aconn.close())
        self.loop.close()
        self.conn.close()

    @rule(n=st.integers(min_value=1, max_value=4))
    def produce(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                rid, _ = await enqueue(self.aconn, command_type="MINT", payload={}, schema=self.schema)
                self.pending.add(rid)
                self.attempts[rid] = 0

        self.run(go())

    @rule(w=st.integers(0, 2), limit=st.integers(1, 5))
    def claim(self, w: int, limit: int) -> None:
        got = self.run(self.stores[w].claim(["MINT"], limit, 300.0))
        eligible = self.pending | set(self.expired)
        assert len(got) == min(limit, len(eligible))
        for c in got:
            assert c.id in eligible
            if c.id in self.expired:
                ow, otok = self.expired.pop(c.id)
                self.stale.append((ow, c.id, otok))
            self.pending.discard(c.id)
            self.attempts[c.id] += 1
            assert c.attempts == self.attempts[c.id]
            self.held[c.id] = (w, c.lease_token)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.held)))
        self.conn.execute(
            sql.SQL("UPDATE {} SET lease_expires_at = now() - interval '1 s' WHERE id = %s").format(
                sql.Identifier(self.schema, "outbox_commands")
            ),
            [rid],
        )
        self.expired[rid] = self.held.pop(rid)

    @precondition(lambda self: bool(self.held) or bool(self.expired))
    @rule(data=st.data(), action=st.sampled_from(["commit", "retry", "fail", "release"]))
    def complete(self, data: st.DataObject, action: str) -> None:
        pool = {**self.held, **self.expired}
        rid = data.draw(st.sampled_from(sorted(pool)))
        w, tok = pool[rid]
        self._finish(w, rid, tok, action, expect=True)
        self.held.pop(rid, None)
        self.expired.pop(rid, None)
        if action in ("retry", "release"):
            self.pending.add(rid)
            if action == "release":
                self.attempts[rid] -= 1
        else:
            self.done.add(rid)

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data(), action=st.sampled_from(["commit", "retry", "fail", "release", "renew", "submit"]))
    def stale_holder_is_fenced(self, data: st.DataObject, action: str) -> None:
        w, rid, tok = data.draw(st.sampled_from(self.stale))
        self._finish(w, rid, tok, action, expect=False)

    def _finish(self, w: int, rid: uuid.UUID, tok: uuid.UUID, action: str, *, expect: bool) -> None:
        s = self.stores[w]
        if action == "commit":
            ok = self.run(s.mark_committed([Committed(rid, tok, None, 1, "VALID")])) == {rid}
        elif action == "retry":
            ok = self.run(s.retry_later(rid, tok, error_code="T", error="t", delay_s=0))
        elif action == "fail":
            ok = self.run(s.mark_failed(rid, tok, error_code="F", error="f"))
        elif action == "release":
            ok = self.run(s.release([(rid, tok)])) == 1
        elif action == "renew":
            ok = self.run(s.renew([(rid, tok)], 300.0)) == {rid}
        else:
            ok = self.run(s.mark_submitted_tx([SubmittedTx(rid, tok, "t", 0, "f", nonce=bytes(24))])) == {rid}
        assert ok is expect, (action, expect)

    @invariant()
    def database_matches_model(self) -> None:
        rows = self.conn.execute(
            sql.SQL("SELECT id, status, lease_token, attempts FROM {}").format(
                sql.Identifier(self.schema, "outbox_commands")
            )
        ).fetchall()
        for rid, status, token, attempts in rows:
            assert attempts == self.attempts[rid]
            if rid in self.pending:
                assert status == "PENDING"
            elif rid in self.held or rid in self.expired:
                assert status in ("CLAIMED", "SUBMITTED")
                assert token == {**self.held, **self.expired}[rid][1]
            else:
                assert rid in self.done and status in ("COMMITTED", "FAILED")


def test_lease_state_machine(pg_url: str, schema: str) -> None:
    run_state_machine_as_test(
        # Hypothesis documents any factory here; its annotation says a class.
        lambda: LeaseMachine(pg_url, schema),  # type: ignore[arg-type]  # see above
        settings=settings(max_examples=12, stateful_step_count=25, deadline=None),
    )


# -- order keys across processes (migration 0007) -----------------------------------------------------

KEYED_CHILD = r"""
import asyncio, json, random, sys, time
from pathlib import Path
import psycopg
from psycopg import sql
from gxsubmit.outbox import Committed, OutboxStore

url, schema, out, go, seed = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
T = sql.Identifier(schema, "outbox_commands")
UNFINISHED = sql.SQL("SELECT count(*) FROM {} WHERE status <> 'COMMITTED'").format(T)
# Rows written before one we now hold, of its key, not yet committed: never, if the claim keeps the order.
# (A committed row never becomes unfinished again here, so whatever this finds was so at the claim.)
OVERTAKEN = sql.SQL(
    "SELECT count(*) FROM {t} AS mine JOIN {t} AS e ON e.tenant_id = mine.tenant_id "
    "AND e.order_key = mine.order_key AND e.seq < mine.seq AND e.status <> 'COMMITTED' "
    "WHERE mine.id = ANY(%s)").format(t=T)

async def main():
    rng = random.Random(seed)
    store = await OutboxStore.connect(url, schema=schema, worker_id=f"k{seed}")
    check = await psycopg.AsyncConnection.connect(url, autocommit=True)
    deadline = time.monotonic() + 90
    while not go.exists():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    claimed = overtaken = 0
    while time.monotonic() < deadline:
        got = await store.claim(["MINT", "CREATE_USER"], rng.randint(1, 20), 300.0)
        if not got:
            if (await (await check.execute(UNFINISHED)).fetchone())[0] == 0:
                break
            await asyncio.sleep(0.002)
            continue
        claimed += len(got)
        overtaken += (await (await check.execute(OVERTAKEN, [[c.id for c in got]])).fetchone())[0]
        rng.shuffle(got)
        for c in got:  # one completion per statement, in random order, interleaved with the others
            await asyncio.sleep(rng.random() / 1000)
            assert await store.mark_committed([Committed(c.id, c.lease_token, None, 1, "VALID")]) == {c.id}
    await store.close()
    await check.close()
    out.write_text(json.dumps({"claimed": claimed, "overtaken": overtaken}))

asyncio.run(main())
"""


def test_processes_keep_each_order_key_in_order(pg_url: str, schema: str, tmp_path: Path) -> None:
    # 600 rows of two types on 31 keys (interleaved) plus 150 without a key, four claimers: a keyed row is
    # claimed only after the row of its key before it has committed, whoever held either.
    t = sql.Identifier(schema, "outbox_commands")
    _fill(pg_url, schema, 750, keys=31)
    results = _run_children(KEYED_CHILD, pg_url, schema, tmp_path, 4)
    assert sum(r["claimed"] for r in results) == 750
    assert sum(r["overtaken"] for r in results) == 0  # no row held while one before it was unfinished
    assert sum(1 for r in results if r["claimed"]) >= 2  # they really ran concurrently
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(sql.SQL(
            "SELECT order_key, committed_at, attempts FROM {} WHERE order_key IS NOT NULL "
            "ORDER BY order_key, seq").format(t)).fetchall()
        assert conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE status <> 'COMMITTED'").format(t)
                            ).fetchone() == (0,)
    assert len(rows) == 600 and {r[2] for r in rows} == {1}
    by_key: dict[str, list[Any]] = {}
    for key, committed_at, _ in rows:
        by_key.setdefault(key, []).append(committed_at)
    assert len(by_key) == 31
    for key, chain in by_key.items():
        assert chain == sorted(chain), key  # each key committed in the order it was written
