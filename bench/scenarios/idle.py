"""Scenario 6, idle and pickup.

Idle: database queries per second of one supervisor (3 workers) with an empty queue, over a window after
start-up has settled (pg_stat_statements calls, else pg_stat_database transactions of the bench's own
database; nothing else uses that database during the window).

Pickup: single CREATE_USER inserts, spaced out; delay = the row's ``locked_at`` (``now()`` of the claim
statement's transaction) minus the insert's commit time taken on the client right after COMMIT returned
(same machine clock).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import WORKLOAD, Context, Progress, SupervisorProc, percentile, say
from bench.scenarios.saturation import SPEC


def run(ctx: Context) -> dict[str, Any]:
    emu = ctx.emulator("fast", SPEC)
    schema = ctx.db.new_schema()
    sup = SupervisorProc(
        ctx.workdir,
        "idle",
        database_url=ctx.db.url,
        schema=schema,
        gateway=emu.target,
        wallet=ctx.wallet,
        insecure=True,
    )
    settle, window = (2.0, 10.0) if ctx.quick else (5.0, 30.0)
    n_inserts, spacing = (80, 0.04) if ctx.quick else (200, 0.05)
    configs: list[dict[str, Any]] = []
    sup.start()
    try:
        ready = sup.wait_ready(60.0)
        prog = Progress("idle")
        t0 = time.monotonic()
        while time.monotonic() - t0 < settle:
            prog.tick("settling")
            time.sleep(0.1)
        q0, c0, m0 = ctx.db.query_count(), sup.cpu(), time.monotonic()
        while time.monotonic() - m0 < window:
            prog.tick(lambda: f"idle window {time.monotonic() - m0:4.1f}/{window:g}s")
            time.sleep(0.1)
        q1, c1, m1 = ctx.db.query_count(), sup.cpu(), time.monotonic()
        secs = m1 - m0
        idle_q = (q1 - q0) / secs
        cpu = sum(v - c0.get(pid, 0.0) for pid, v in c1.items())
        configs.append(
            {
                "config": "idle",
                "db_queries_per_s_per_replica": idle_q,
                "window_s": round(secs, 2),
                "db_queries_in_window": q1 - q0,
                "gxsubmit_cpu_ms_per_s": cpu * 1000 / secs,
                "ready_s": round(ready, 3),
                "note": f"{idle_q:.2f} queries/s, gx cpu {cpu * 1000 / secs:.1f} ms/s",
            }
        )
        configs.append(asyncio.run(_pickup(ctx, schema, n_inserts, spacing)))
    finally:
        sup.stop()
        ctx.db.drop_schema(schema)
    return {
        "configs": configs,
        "settings": {
            "settle_s": settle,
            "window_s": window,
            "pickup_inserts": n_inserts,
            "pickup_spacing_s": spacing,
            "poll_interval": sup.cfg.poll_interval,
            "query_counter": ctx.db.counter_method,
        },
    }


async def _pickup(ctx: Context, schema: str, n: int, spacing: float) -> dict[str, Any]:
    import psycopg

    _, ctype, expr = WORKLOAD[0]
    table = f'"{schema}".outbox_commands'
    commit_ts: dict[str, float] = {}
    prog = Progress("pickup")
    async with await psycopg.AsyncConnection.connect(ctx.db.url, autocommit=True) as conn:
        for g in range(1, n + 1):
            rid = f"pickup-{g}"
            await conn.execute(
                f"INSERT INTO {table} (service, command_type, request_id, payload) "
                f"SELECT 'bench', '{ctype}', %(rid)s, ({expr})"
                f" FROM (SELECT %(g)s::int AS g, 'pk'::text AS p) AS x",
                {"rid": rid, "g": g},
            )
            commit_ts[rid] = time.time()
            prog.tick(f"inserted {g}/{n}")
            await asyncio.sleep(spacing)
        deadline = time.monotonic() + 30.0
        rows: list[tuple[str, Any]] = []
        while time.monotonic() < deadline:
            cur = await conn.execute(
                f"SELECT request_id, locked_at FROM {table} WHERE request_id LIKE 'pickup-%%'"
                " AND locked_at IS NOT NULL"
            )
            rows = await cur.fetchall()
            if len(rows) >= n:
                break
            await asyncio.sleep(0.2)
    delays = [(locked.timestamp() - commit_ts[rid]) * 1000 for rid, locked in rows if rid in commit_ts]
    if len(delays) < n:
        say(f"pickup: only {len(delays)}/{n} rows were claimed within the deadline")
    return {
        "config": "pickup",
        "samples": len(delays),
        "p50_ms": percentile(delays, 50),
        "p95_ms": percentile(delays, 95),
        "p99_ms": percentile(delays, 99),
        "max_ms": max(delays) if delays else None,
        "note": "INSERT commit -> claim (locked_at), ms",
    }
