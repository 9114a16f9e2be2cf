"""Scenario 6, idle and pickup.

Idle: statements per second of one supervisor (3 workers, one replica) with an empty queue, counted by
``pg_stat_statements`` on a PostgreSQL server of the scenario's own (an ``EmbeddedPostgres`` with the
library preloaded: the machine server usually lacks it, and its ``pg_stat_database`` transaction counters
include autovacuum/statistics traffic). Only statements of the supervisor's role in the scenario's
database count: the harness reads the view as a separate role (``gxbench_observer``) connected to another
database, so its own statements are excluded by construction. The window is at least 30 s even in quick
mode: the supervisor's statistics run every 15 s and each worker's fallback poll every ~30 s, so a
shorter window would miss them. The top statements by calls in the window go into the JSON.

Pickup: single CREATE_USER inserts, spaced out; delay = the row's ``locked_at`` (``now()`` of the claim
statement's transaction) minus the inserting transaction's commit time as the server recorded it
(``track_commit_timestamp``, looked up by the inserted row's ``xmin``). Both come from the server clock.
(A client-side time taken after COMMIT returned came later than some claims: the NOTIFY reaches the
worker while the acknowledgement is still on its way to the client, and p50 read negative.) It runs on
the same server, after the idle window.

Both run three times (``SETUPS``): directly; through a PgBouncer of the scenario's own in transaction mode
with only the pooled URL (LISTEN cannot work there: the workers' probe finds it and they poll every
``pooled_poll_interval``, which is what the idle rate then costs); and through the same PgBouncer with a
direct ``listen_url``. Statements through the pooler run as the same role in the same database, so
pg_stat_statements counts them alike.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import WORKLOAD, Context, Progress, SupervisorProc, percentile, say
from bench.scenarios.saturation import SPEC

OBSERVER = "gxbench_observer"


class StatementCounter:
    """pg_stat_statements of one database and one role, read as another role from another database."""

    def __init__(self, observer_url: str, dbname: str, role: str) -> None:
        import psycopg

        self.conn = psycopg.connect(observer_url, autocommit=True)
        self.dbname, self.role = dbname, role

    def snapshot(self) -> dict[int, tuple[int, str]]:
        rows = self.conn.execute(
            "SELECT s.queryid, s.calls, s.query FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid JOIN pg_roles r ON r.oid = s.userid"
            " WHERE d.datname = %s AND r.rolname = %s",
            (self.dbname, self.role),
        ).fetchall()
        return {int(q): (int(c), str(t)) for q, c, t in rows}

    def close(self) -> None:
        self.conn.close()


def diff(a: dict[int, tuple[int, str]], b: dict[int, tuple[int, str]]) -> list[tuple[int, str]]:
    """(calls in between, statement text) per statement that ran between two snapshots, most calls first."""
    out = [(calls - a.get(q, (0, ""))[0], text) for q, (calls, text) in b.items()]
    return sorted((d for d in out if d[0] > 0), key=lambda d: -d[0])


def _start_server(ctx: Context) -> tuple[Any, str, str, str]:
    """An embedded server with pg_stat_statements; returns (server, bench url, observer url, dbname)."""
    import psycopg

    from gxsubmit.pgembed import EmbeddedPostgres

    pg = EmbeddedPostgres(
        ctx.workdir / "pg-idle",
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "top",
            "track_commit_timestamp": "on",  # pickup's start: the insert's commit time
        },
    )
    pg.start()
    dbname = "gxbench_idle"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{dbname}"')
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        c.execute(f'CREATE ROLE "{OBSERVER}" LOGIN IN ROLE pg_read_all_stats')
    with psycopg.connect(pg.url_for(dbname), autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    observer = pg.url.replace("postgres@", f"{OBSERVER}@", 1)
    return pg, pg.url_for(dbname), observer, dbname


def _migrated_schema(url: str) -> str:
    import secrets

    import psycopg

    from gxsubmit.outbox import migrate

    schema = "gxb_" + secrets.token_hex(4)

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate(conn, schema)

    asyncio.run(go())
    return schema


#: (label suffix, through PgBouncer, LISTEN on a direct URL): the direct set-up first (its configs keep the
#: names "idle" and "pickup" that run.py's targets read), then a transaction-mode PgBouncer in front of the
#: same server with the pooled URL only (workers find NOTIFY does not arrive and poll every
#: pooled_poll_interval), then the pooled URL plus a direct LISTEN URL.
SETUPS = (("", False, False), (" pooled (short poll)", True, False), (" pooled + direct LISTEN", True, True))


def run(ctx: Context) -> dict[str, Any]:
    from gxsubmit.pgbouncer import PgBouncer, find_pgbouncer

    emu = ctx.emulator("fast", SPEC)
    settle, window = (1.5, 30.0) if ctx.quick else (5.0, 90.0)
    n_inserts, spacing = (40, 0.04) if ctx.quick else (200, 0.05)
    pg, url, observer_url, dbname = _start_server(ctx)
    counter: StatementCounter | None = None
    bouncer: PgBouncer | None = None
    configs: list[dict[str, Any]] = []
    sup: SupervisorProc | None = None
    try:
        schema = _migrated_schema(url)
        counter = StatementCounter(observer_url, dbname, "postgres")
        for n, (label, pooled, direct_listen) in enumerate(SETUPS):
            settings: dict[str, Any] = {"database_url": url}
            if pooled:
                if find_pgbouncer() is None:
                    say("idle: pgbouncer is not installed; the pooled configurations are skipped")
                    break
                if bouncer is None:
                    bouncer = PgBouncer("127.0.0.1", pg.port, pool_mode="transaction")
                    bouncer.start()
                settings = {"database_url": bouncer.url(dbname)}
                if direct_listen:
                    settings["listen_url"] = url
            sup = SupervisorProc(ctx.workdir, f"idle{n}", schema=schema, gateway=emu.target,
                                 wallet=ctx.wallet, insecure=True, **settings)
            sup.start()
            try:
                configs += _measure(sup, counter, label, settle, window)
                configs.append(asyncio.run(_pickup(url, schema, n_inserts, spacing, label, f"pickup{n}")))
            finally:
                sup.stop()
    finally:
        if counter is not None:
            counter.close()
        if bouncer is not None:
            bouncer.cleanup()
        pg.stop()
    return {
        "configs": configs,
        "settings": {
            "settle_s": settle,
            "window_s": window,
            "pickup_inserts": n_inserts,
            "pickup_spacing_s": spacing,
            "poll_interval": sup.cfg.poll_interval if sup else None,
            "pooled_poll_interval": sup.cfg.pooled_poll_interval if sup else None,
            "server": f"embedded PostgreSQL of its own ({pg.datadir.name}), pg_stat_statements preloaded",
            "pooler": "PgBouncer (system binary), pool_mode=transaction, in front of the same server",
            "query_counter": "pg_stat_statements calls (top-level statements, utility included) of the "
            "supervisor's role in the scenario's database; the harness reads as "
            f"{OBSERVER} from another database",
        },
    }


def _measure(sup: SupervisorProc, counter: StatementCounter, label: str, settle: float,
             window: float) -> list[dict[str, Any]]:
    """Statements per second of an idle supervisor over ``window`` seconds."""
    ready = sup.wait_ready(60.0)
    prog = Progress("idle" + label)
    t0 = time.monotonic()
    while time.monotonic() - t0 < settle:
        prog.tick("settling")
        time.sleep(0.1)
    s0, c0, m0 = counter.snapshot(), sup.cpu(), time.monotonic()
    while time.monotonic() - m0 < window:
        prog.tick(lambda: f"idle window {time.monotonic() - m0:4.1f}/{window:g}s")
        time.sleep(0.1)
    s1, c1, m1 = counter.snapshot(), sup.cpu(), time.monotonic()
    secs = m1 - m0
    stmts = diff(s0, s1)
    total = sum(n for n, _ in stmts)
    replicas = 1
    per_s = total / secs / replicas
    cpu = sum(v - c0.get(pid, 0.0) for pid, v in c1.items())
    return [
        {
            "config": "idle" + label,
            "db_queries_per_s_per_replica": per_s,
            "replicas": replicas,
            "workers": len(sup.worker_pids()),
            "window_s": round(secs, 2),
            "db_queries_in_window": total,
            "top_statements": [
                {"calls": n, "per_s": round(n / secs, 4), "query": " ".join(t.split())[:300]}
                for n, t in stmts[:12]
            ],
            "gxsubmit_cpu_ms_per_s": cpu * 1000 / secs,
            "ready_s": round(ready, 3),
            "note": f"{per_s:.3f} stmt/s ({total} in {secs:.0f} s, pg_stat_statements), "
            f"gx cpu {cpu * 1000 / secs:.1f} ms/s",
        }
    ]


async def _pickup(url: str, schema: str, n: int, spacing: float, label: str, prefix: str) -> dict[str, Any]:
    import psycopg

    _, ctype, expr = WORKLOAD[0]
    table = f'"{schema}".outbox_commands'
    commit_ts: dict[str, float] = {}
    prog = Progress("pickup" + label)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for g in range(1, n + 1):
            rid = f"{prefix}-{g}"
            cur = await conn.execute(
                f"INSERT INTO {table} (service, command_type, request_id, payload) "
                f"SELECT 'bench', '{ctype}', %(rid)s, ({expr})"
                f" FROM (SELECT %(g)s::int AS g, 'pk'::text AS p) AS x RETURNING xmin::text",
                {"rid": rid, "g": g},
            )
            row = await cur.fetchone()
            assert row is not None
            cur = await conn.execute("SELECT pg_xact_commit_timestamp(%s::xid)", (row[0],))
            committed = await cur.fetchone()
            assert committed is not None and committed[0] is not None, "track_commit_timestamp is off"
            commit_ts[rid] = committed[0].timestamp()
            prog.tick(f"inserted {g}/{n}")
            await asyncio.sleep(spacing)
        deadline = time.monotonic() + 30.0
        rows: list[tuple[str, Any]] = []
        while time.monotonic() < deadline:
            cur = await conn.execute(
                f"SELECT request_id, locked_at FROM {table} WHERE request_id LIKE '{prefix}-%%'"
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
        "config": "pickup" + label,
        "samples": len(delays),
        "p50_ms": percentile(delays, 50),
        "p95_ms": percentile(delays, 95),
        "p99_ms": percentile(delays, 99),
        "max_ms": max(delays) if delays else None,
        "note": "INSERT commit (server commit timestamp) -> claim (locked_at), ms (same server as idle)",
    }
