"""Scenario wan: a replica far from its database and gateway (bench/faultproxy.py adds the round trip).

One supervisor whose links to PostgreSQL and to the gateway both go through a delay proxy of 0, 50,
150 and 250 ms round trip, on the realistic emulator (2 s blocks, Endorse 20-50 ms), 3 identities at
one in-flight limit; throughput over whole block periods, created -> committed p50/p99 and database
statements per command. Each round trip is run three ways: a closed population of exactly the in-flight
capacity (the original measure: its p50 is population / throughput by Little's law, so it is a
throughput figure), a backlog of twice the capacity at 0 and 150 ms (the capacity itself: the worker
never waits for the next row), and an open arrival of OPEN_RATE rows/s, below the capacity at every
round trip (the latency a command sees: created -> committed with no queue in front of it).
Then two replicas on one database, one near (direct links) and one far
(150 ms): who does the work; what happens when the far one's database link is blackholed (its /readyz,
how long until the near one has committed every row the far one held, and its readiness once the link
heals); and when the near one is SIGKILLed (how long until the far one has committed every row the near
one held, and its rate alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

from bench.common import (
    WORKLOAD,
    Context,
    EmulatorSpec,
    Feeder,
    Progress,
    SupervisorProc,
    db_now,
    run_load,
    workload_for,
)
from bench.faultproxy import FaultProxy, upstream_of, via

SPEC = EmulatorSpec(block_time=2.0, block_size=10000, latency={"Endorse": (0.020, 0.050)})
RTTS_MS = (0, 50, 150, 250)
#: (round trip, in-flight limit) run after the sweep: the limit docs/operations.md recommends at 150 ms
#: for the 0 ms row's rate per identity (rate x (block + 4 db rtt + 3 gateway rtt) x 1.5, rounded up),
#: and 0 ms at that limit too (the like-for-like base)
SIZED = ((0, 512), (150, 512))
FAR_MS = 150
#: offered rows/s of the open-loop latency runs (below the capacity at 250 ms at the default in-flight)
OPEN_RATE = 90.0
#: round trips at which the capacity is also measured with a backlog (the throughput target's pair)
BACKLOG_RTTS = (0, 150)
JITTER = 0.05  # of the round trip


def _committed(sup: SupervisorProc) -> int:
    """Commands this replica's workers committed so far (its /status)."""
    import json

    code, body = sup.http("/status", timeout=2.0)
    if code != 200:
        return 0
    return sum(int(w.get("committed") or 0) for w in json.loads(body).get("workers", {}).values())


def _kill_tree(sup: SupervisorProc) -> None:
    """SIGKILL the supervisor and its workers at once (a dead host, not a drain)."""
    for pid in reversed(sup.pids()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _held_by(url: str, schema: str, name: str) -> list[Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        return [r[0] for r in c.execute(
            f'SELECT id FROM "{schema}".outbox_commands WHERE status IN (\'CLAIMED\', \'SUBMITTED\')'
            " AND locked_by LIKE %s", (name + ":%",))]


def _finished_at(url: str, schema: str, ids: list[Any]) -> tuple[int, Any]:
    """(how many of ``ids`` are COMMITTED, the latest committed_at among them)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(
            f'SELECT count(*), max(committed_at) FROM "{schema}".outbox_commands'
            " WHERE id = ANY(%s) AND status = 'COMMITTED'", (ids,)).fetchone()
    return int(row[0]), row[1]


def _rate(url: str, schema: str, a: Any, b: Any) -> float | None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        n = c.execute(f'SELECT count(*) FROM "{schema}".outbox_commands WHERE status = \'COMMITTED\''
                      " AND committed_at >= %s AND committed_at < %s", (a, b)).fetchone()[0]
    s = (b - a).total_seconds()
    return int(n) / s if s > 0 else None


def _readyz(sup: SupervisorProc) -> int:
    with contextlib.suppress(OSError):
        return sup.http("/readyz", timeout=2.0)[0]
    return 0


async def _blackhole_far(url: str, schema: str, far: SupervisorProc, dbp: FaultProxy, lease: float,
                         prog: Progress) -> dict[str, Any]:
    """Blackhole the far replica's database link while both run: how long until its /readyz says 503,
    until the near one has committed every row the far one held (the target: lease + one block), and
    until the far one is ready again once the link heals."""
    held = _held_by(url, schema, "wan-far")
    dbp.blackhole()
    cut, t0 = await db_now(url), time.monotonic()
    out: dict[str, Any] = {"far_held_at_blackhole": len(held), "blackhole_target_s": lease + SPEC.block_time}
    unready = None
    done, last = 0, None
    while time.monotonic() - t0 < 3 * lease + 30:
        if unready is None and _readyz(far) == 503:
            unready = round(time.monotonic() - t0, 2)
        done, last = _finished_at(url, schema, held)
        prog.tick(lambda: f"far blackholed; near committed {done}/{len(held)} of its rows")  # noqa: B023
        if done == len(held) and unready is not None:
            break
        await asyncio.sleep(0.2)
    out["blackhole_unready_s"] = unready
    out["blackhole_rows_committed_by_near"] = done
    whole = last is not None and done == len(held)
    out["blackhole_takeover_s"] = round((last - cut).total_seconds(), 2) if whole else None
    dbp.blackhole(False)
    t1 = time.monotonic()
    ready = False
    while not ready and time.monotonic() - t1 < 120:
        ready = _readyz(far) == 200
        if not ready:
            await asyncio.sleep(0.2)
    out["far_ready_after_heal_s"] = round(time.monotonic() - t1, 2) if ready else None
    return out


def two_replicas(ctx: Context, emu: Any, dbp: FaultProxy, gwp: FaultProxy, limit: int) -> dict[str, Any]:
    identities = [i for i, _, _ in WORKLOAD]
    dbp.delay(FAR_MS, FAR_MS * JITTER)
    gwp.delay(FAR_MS, FAR_MS * JITTER)
    lease = 10.0
    schema = ctx.db.new_schema()
    common = dict(schema=schema, wallet=ctx.wallet, insecure=True, max_in_flight=limit, lease_seconds=lease)
    near = SupervisorProc(ctx.workdir, "wan-near", database_url=ctx.db.url, gateway=emu.target, **common)
    far = SupervisorProc(ctx.workdir, "wan-far", database_url=via(ctx.db.url, dbp), gateway=gwp.address,
                         **common)
    warmup, duration = (3.0, 8.0) if ctx.quick else (6.0, 30.0)
    feeder = Feeder(ctx.db.url, schema, workload_for(identities), 2 * len(identities) * limit)
    prog = Progress("wan two replicas")
    out: dict[str, Any] = {"config": f"near + far ({FAR_MS} ms)", "far_rtt_ms": FAR_MS, "lease_s": lease,
                           "max_in_flight": limit}

    async def drive() -> None:
        task = asyncio.create_task(feeder.run())
        try:
            await asyncio.sleep(warmup)
            n0, f0, a = _committed(near), _committed(far), await db_now(ctx.db.url)
            await asyncio.sleep(duration)
            n1, f1, b = _committed(near), _committed(far), await db_now(ctx.db.url)
            out["near_committed"], out["far_committed"] = n1 - n0, f1 - f0
            total = (n1 - n0) + (f1 - f0)
            out["far_share"] = round((f1 - f0) / total, 3) if total else None
            out["commands_per_s"] = _rate(ctx.db.url, schema, a, b)
            out.update(await _blackhole_far(ctx.db.url, schema, far, dbp, lease, prog))
            _kill_tree(near)
            killed = await db_now(ctx.db.url)
            await asyncio.sleep(0.5)  # statements the dead replica had sent are answered by now
            held = _held_by(ctx.db.url, schema, "wan-near")  # what it left behind for the far one
            out["near_held_at_kill"] = len(held)
            t0 = time.monotonic()
            done, last = 0, None
            while time.monotonic() - t0 < 3 * lease + 30:
                done, last = _finished_at(ctx.db.url, schema, held)
                prog.tick(lambda: f"near killed; far committed {done}/{len(held)} of its rows")  # noqa: B023
                if done == len(held):
                    break
                await asyncio.sleep(0.25)
            out["near_rows_committed_by_far"] = done
            whole = last is not None and done == len(held)
            out["takeover_s"] = round((last - killed).total_seconds(), 2) if whole else None
            c = await db_now(ctx.db.url)
            await asyncio.sleep(duration)
            out["far_alone_commands_per_s"] = _rate(ctx.db.url, schema, c, await db_now(ctx.db.url))
        finally:
            feeder.stop()
            await task

    try:
        near.start()
        far.start()
        near.wait_ready(60.0)
        far.wait_ready(60.0)
        asyncio.run(drive())
    finally:
        near.stop()
        far.stop()
        ctx.db.drop_schema(schema)
    out["note"] = (f"far share {out.get('far_share')}; far blackholed: /readyz 503 after "
                   f"{out.get('blackhole_unready_s')} s, its {out.get('far_held_at_blackhole')} rows done by "
                   f"near in {out.get('blackhole_takeover_s')} s (target lease + block "
                   f"{out.get('blackhole_target_s')} s), ready {out.get('far_ready_after_heal_s')} s after "
                   f"the heal; near killed: its {out.get('near_held_at_kill')} rows "
                   f"done by far in {out.get('takeover_s')} s (lease {lease:g} s)")
    return out


def run(ctx: Context) -> dict[str, Any]:
    emu = ctx.emulator("realistic", SPEC)
    identities = [i for i, _, _ in WORKLOAD]
    limit = 256
    # Longer than realistic's quick window: at a distance the wave of a closed population spreads over
    # blocks, and 2-3 blocks say little about the rate.
    warmup, duration = (5.0, 12.0) if ctx.quick else (8.0, 40.0)
    configs: list[dict[str, Any]] = []
    with FaultProxy(upstream_of(ctx.db.url), name="wan-db", seed=1) as dbp, \
            FaultProxy(emu.target, name="wan-gw", seed=2) as gwp:
        rtts = tuple(ctx.shared.get("args", {}).get("rtts") or RTTS_MS)
        runs = [*((r, limit, "capacity") for r in rtts),
                *((r, limit, "backlog") for r in BACKLOG_RTTS if r in rtts),
                *((r, lim, "capacity") for r, lim in SIZED if r in rtts),
                *((r, limit, "open") for r in rtts)]
        for rtt, lim, mode in runs:
            dbp.delay(rtt, rtt * JITTER)
            gwp.delay(rtt, rtt * JITTER)
            schema = ctx.db.new_schema()
            sup = SupervisorProc(ctx.workdir, f"wan-{rtt}-{lim}-{mode}", database_url=via(ctx.db.url, dbp),
                                 schema=schema, gateway=gwp.address, wallet=ctx.wallet, insecure=True,
                                 max_in_flight=lim, log_level="info")
            population = len(identities) * lim * (2 if mode == "backlog" else 1)
            stats = run_load(ctx, label=f"wan rtt {rtt} ms in-flight {lim} {mode}", sups=[sup], emu=emu,
                             schema=schema, types=workload_for(identities), target=population,
                             warmup=warmup, duration=duration, block_aligned=mode != "open",
                             rate=OPEN_RATE if mode == "open" else None)
            bound = SPEC.block_time * 1000 + 4 * rtt
            what = {"capacity": f"population {population} (= capacity)",
                    "backlog": f"population {population} (2 x capacity)",
                    "open": f"open arrival {OPEN_RATE:g}/s"}[mode]
            stats.update(config=f"rtt {rtt} ms, in-flight {lim}, {what}", rtt_ms=rtt, max_in_flight=lim,
                         mode=mode, p50_bound_ms=bound, sized=lim != limit,
                         note=f"p50 bound (block + 4 rtt) {bound:g} ms")
            configs.append(stats)
            ctx.db.drop_schema(schema)
        try:
            if FAR_MS in rtts:
                configs.append(two_replicas(ctx, emu, dbp, gwp, limit))
        except Exception as exc:  # reported, the RTT rows stand
            configs.append({"config": "near + far", "skipped": f"{type(exc).__name__}: {exc}"[:200]})
    for mode in ("capacity", "backlog"):
        base = next((c.get("commands_per_s") for c in configs
                     if c.get("rtt_ms") == 0 and not c.get("sized") and c.get("mode") == mode), None)
        for c in configs:
            if base and c.get("mode") == mode and c.get("rtt_ms") is not None and c.get("commands_per_s"):
                c["ratio_to_0ms"] = round(c["commands_per_s"] / base, 3)
    return {
        "configs": configs,
        "settings": {
            "emulator": SPEC.describe(),
            "identities": identities,
            "max_in_flight": limit,
            "population": "capacity: identities x in-flight; backlog: twice that; open: no population, "
                          f"{OPEN_RATE:g} rows/s offered",
            "links": "database and gateway both through bench/faultproxy.py, rtt/2 each way, jitter 5 %",
            "warmup_s": warmup,
            "window_s": duration,
        },
        "targets": {
            "throughput_150ms_vs_0ms": ">= 0.8 (same settings)",
            "p50_150ms": "<= block time + 4 round trips (2,600 ms), open arrival",
            "blackholed_database_link": "/readyz 503 within 15 s; the rows it held committed by the other "
                                        "replica within lease + one block",
        },
    }
