"""What a long retained history costs: the supervisor's statistics refresh, and pruning it.

``python bench/history.py [--url URL] [--rows N] [--rounds R]``

Every replica's supervisor calls ``OutboxStore.stats()`` every 3-15 s for its gauges and /status. Finished
rows stay in the table, so a statement that counts them reads the whole history each time. This fills a
scratch schema with N COMMITTED rows (and a few unfinished ones), then times ``stats()`` as shipped
(COMMITTED estimated past ``EXACT_COMMITTED_BELOW``) against ``stats(exact_below=N * 10)``, which counts
every row as the statement did before. Half of the rows were committed 40 days ago: then it times
``OutboxStore.prune`` (``gxsubmit prune --older-than 30d``) deleting them, and a second prune with nothing
left to delete, which must not read the recent half. The schema is dropped afterwards. Filling 2 million
rows takes about a minute on the 2-core box.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gxsubmit.outbox import OutboxStore, migrate

_FILL = """
INSERT INTO {t} (service, command_type, request_id, payload, status, attempts, tx_nonce, fabric_tx_id,
                 created_at, committed_at, commit_block, validation_code)
SELECT 'bench', (ARRAY['CREATE_USER', 'TRANSFER_TOKENS', 'APPROVE_KYC'])[1 + g %% 3], 'h-' || g,
       '{{"userId": "u-1234567890", "amount": "100.00", "currency": "GXC"}}'::jsonb, 'COMMITTED', 1,
       decode(md5(g::text), 'hex'), md5(g::text) || md5((g + 1)::text), c.at, c.at, g / 500, 'VALID'
  FROM generate_series(1, %(n)s) AS g,
       LATERAL (SELECT CASE WHEN g <= %(n)s / 2 THEN now() - interval '40 days' ELSE now() END AS at) AS c
"""


async def _timed(store: OutboxStore, rounds: int, **kw: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await store.stats(**kw)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def main(args: argparse.Namespace) -> None:
    schema = f"gxhistory_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
        await migrate(conn, schema)
        t = sql.Identifier(schema, "outbox_commands")
        try:
            t0 = time.perf_counter()
            await conn.execute(sql.SQL(_FILL).format(t=t), {"n": args.rows})
            await conn.execute(
                sql.SQL("INSERT INTO {t} (service, command_type, request_id, payload) "
                        "SELECT 'bench', 'MINT', 'p-' || g, '{{}}'::jsonb FROM generate_series(1, 10) AS g")
                .format(t=t))
            await conn.execute(sql.SQL("VACUUM ANALYZE {t}").format(t=t))
            size = (await (await conn.execute("SELECT pg_size_pretty(pg_total_relation_size(%s::regclass))",
                                              (f'"{schema}".outbox_commands',))).fetchone() or ("?",))[0]
            took = time.perf_counter() - t0
            print(f"filled {args.rows:,} COMMITTED rows (half of them 40 days old) + 10 PENDING "
                  f"in {took:.1f} s ({size})")
            store = await OutboxStore.connect(args.url, schema=schema, worker_id="bench-history")
            try:
                for _ in range(2):  # interleaved, so a change in the machine's speed shows in both
                    shipped = await _timed(store, args.rounds)
                    full = await _timed(store, args.rounds, exact_below=args.rows * 10)
                    print(f"stats() as shipped:          median {statistics.median(shipped):8.2f} ms "
                          f"(min {min(shipped):.2f}, max {max(shipped):.2f})")
                    print(f"counting every row (before): median {statistics.median(full):8.2f} ms "
                          f"(min {min(full):.2f}, max {max(full):.2f})")
                s = await store.stats()
                print(f"shipped result: COMMITTED {s.by_status['COMMITTED']:,} "
                      f"(estimated: {s.committed_estimated}), PENDING {s.by_status['PENDING']}")
                for _ in range(2):
                    t0 = time.perf_counter()
                    n, _cutoff = await store.prune(30 * 86400.0)
                    took = time.perf_counter() - t0
                    print(f"prune --older-than 30d: deleted {n:,} rows in {took:.2f} s"
                          + (f" ({n / took:,.0f} rows/s)" if n else ""))
            finally:
                await store.close()
        finally:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(p.parse_args()))
