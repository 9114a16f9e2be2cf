"""What adopting the services' "OutboxCommand" costs (gxsubmit.legacy): queue mechanics and producer inserts
with and without the adoption's triggers, A/B interleaved in one run.

``python bench/legacy_outbox.py [--url URL] [--rows N] [--rounds R] [--claim B] [--inserts M]``

- drain: N rows are put in the queue untimed (plain: into outbox_commands; adopted: into "OutboxCommand",
  through the producers' trigger), then one connection drains them as a worker's statements do per
  batch of B: claim, record_tx_many, mark_submitted, mark_committed (no gateway). With adoption, three of
  those four statements change status and write every row back to "OutboxCommand".
- insert: M single-row producer transactions into "OutboxCommand" (Prisma's create), without and with
  the adoption installed; beside them, M single-row transactions of gxsubmit's own enqueue (what a
  producer rewritten for gxsubmit would pay: about half of the adopted insert's extra cost is the
  NOTIFY that any insert into outbox_commands sends at commit).

Each round runs both variants in fresh schemas (dropped after), alternating which goes first; the
ratios of the same round are the figure, never rates across runs. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import legacy_prisma as lp  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from gxsubmit import legacy  # noqa: E402
from gxsubmit.outbox import Committed, OutboxStore, TxRecord, migrate  # noqa: E402

TYPE = "CREATE_USER"


async def _setup(url: str, adopted: bool) -> tuple[str, str]:
    """A migrated gxsubmit schema and a schema with the services' tables; adoption installed if asked."""
    gx, svc = "gxb_" + secrets.token_hex(4), "gxb_" + secrets.token_hex(4)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn, gx)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(svc)))
        lp.create(conn, svc)
    if adopted:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await legacy.adopt(conn, gx, sql.Identifier(svc, "OutboxCommand").as_string(None))
    return gx, svc


def _drop(url: str, *schemas: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for s in schemas:
            assert s.startswith("gxb_")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s)))


def _fill(url: str, gx: str, svc: str, rows: int, adopted: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if adopted:
            conn.execute(sql.SQL(
                'INSERT INTO {}."OutboxCommand" ("id", "tenantId", "service", "commandType", "requestId", '
                '"payload", "updatedAt") SELECT \'c\' || g, \'default\', \'bench\', \'CREATE_USER\', '
                '\'r-\' || g, \'{{}}\'::jsonb, now() FROM generate_series(1, %s) AS g').format(
                    sql.Identifier(svc)), (rows,))
        else:
            conn.execute(sql.SQL(
                "INSERT INTO {}.outbox_commands (service, command_type, request_id, payload) "
                "SELECT 'bench', 'CREATE_USER', 'r-' || g, '{{}}'::jsonb "
                "FROM generate_series(1, %s) AS g").format(sql.Identifier(gx)), (rows,))
        conn.execute(sql.SQL("ANALYZE {}.outbox_commands").format(sql.Identifier(gx)))
        conn.execute(sql.SQL('ANALYZE {}."OutboxCommand"').format(sql.Identifier(svc)))


async def _drain(url: str, gx: str, claim: int) -> tuple[int, float]:
    store = await OutboxStore.connect(url, schema=gx, worker_id="bench:org1-admin")
    done = 0
    t0 = time.perf_counter()
    try:
        while rows := await store.claim([TYPE], claim, 60.0):
            await store.record_tx_many([TxRecord(c.id, c.lease_token, b"n" * 24, c.id.hex, "fp")
                                        for c in rows])
            await store.mark_submitted([(c.id, c.lease_token) for c in rows])
            await store.mark_committed([Committed(c.id, c.lease_token, c.id.hex, 1, "VALID") for c in rows])
            done += len(rows)
    finally:
        await store.close()
    return done, time.perf_counter() - t0


def _inserts(url: str, svc: str, n: int) -> float:
    with psycopg.connect(url) as conn:
        cur = conn.cursor()
        t0 = time.perf_counter()
        for i in range(n):
            lp.insert(cur, svc, [(TYPE, f"ins-{i}", "default", {"userId": f"u{i}"})])
            conn.commit()
        return n / (time.perf_counter() - t0)


def _enqueues(url: str, gx: str, n: int) -> float:
    from gxsubmit.outbox import enqueue

    async def go() -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            t0 = time.perf_counter()
            for i in range(n):
                await enqueue(conn, command_type=TYPE, payload={"userId": f"u{i}"}, schema=gx,
                              request_id=f"enq-{i}", service="bench")
            return n / (time.perf_counter() - t0)

    return asyncio.run(go())


def _check_written_back(url: str, svc: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        got = conn.execute(sql.SQL('SELECT count(*) FROM {}."OutboxCommand" WHERE status = \'COMMITTED\' '
                                   'AND "fabricTxId" IS NOT NULL').format(sql.Identifier(svc))).fetchone()
    assert got == (rows,), f"write-back incomplete: {got} of {rows}"


def one(url: str, adopted: bool, args: argparse.Namespace) -> dict[str, float]:
    gx, svc = asyncio.run(_setup(url, adopted))
    try:
        _fill(url, gx, svc, args.rows, adopted)
        done, seconds = asyncio.run(_drain(url, gx, args.claim))
        assert done == args.rows, (done, args.rows)
        if adopted:
            _check_written_back(url, svc, args.rows)
        out = {"drain_rows_per_s": done / seconds, "inserts_per_s": _inserts(url, svc, args.inserts)}
        if not adopted:
            out["native_enqueues_per_s"] = _enqueues(url, gx, args.inserts)
        return out
    finally:
        _drop(url, gx, svc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--claim", type=int, default=500)
    p.add_argument("--inserts", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        res = {("adopted" if a else "plain"): one(args.url, a, args) for a in order}
        ratio_drain = res["adopted"]["drain_rows_per_s"] / res["plain"]["drain_rows_per_s"]
        ratio_ins = res["adopted"]["inserts_per_s"] / res["plain"]["inserts_per_s"]
        ratio_native = res["adopted"]["inserts_per_s"] / res["plain"]["native_enqueues_per_s"]
        rounds.append({**res, "drain_ratio": ratio_drain, "insert_ratio": ratio_ins,
                       "insert_vs_native_ratio": ratio_native})
        print(f"round {r + 1}: drain plain {res['plain']['drain_rows_per_s']:.0f} rows/s, adopted "
              f"{res['adopted']['drain_rows_per_s']:.0f} (x{ratio_drain:.2f}); producer inserts plain "
              f"{res['plain']['inserts_per_s']:.0f}/s, adopted {res['adopted']['inserts_per_s']:.0f}/s "
              f"(x{ratio_ins:.2f}), gxsubmit enqueue {res['plain']['native_enqueues_per_s']:.0f}/s "
              f"(adopted x{ratio_native:.2f} of it)", file=sys.stderr)
    print(json.dumps({
        "rows": args.rows, "claim": args.claim, "inserts": args.inserts, "rounds": rounds,
        "median_drain_ratio": statistics.median(r["drain_ratio"] for r in rounds),
        "median_insert_ratio": statistics.median(r["insert_ratio"] for r in rounds),
        "median_insert_vs_native_ratio": statistics.median(r["insert_vs_native_ratio"] for r in rounds),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
