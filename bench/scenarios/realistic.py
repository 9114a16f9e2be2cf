"""Scenario 2, realistic: 2 s blocks, 20-50 ms endorsement, in-flight limit swept from 1 to 512.

Throughput and created->committed latency percentiles per in-flight limit, one supervisor with 3
identities. The closed population of unfinished rows (PENDING + CLAIMED + SUBMITTED) is held at the
in-flight capacity, identities x in-flight, and never above it: the worker claims only into free slots,
so a larger population would only make rows wait in the queue for the next block and inflate the
latency with queue time the service did not cause. The rate is over whole block periods inside the
window (``block_rate``): a block is cut 2 s after its first transaction, so the period is a little over
2 s and a 5 s window holds 2 or 3 block commits; a plain count / window (kept in the JSON as
``commands_per_s_window``) moves by a whole block with the window's phase.
"""

from __future__ import annotations

from typing import Any

from bench.common import WORKLOAD, Context, EmulatorSpec, SupervisorProc, run_load, workload_for
from gxsubmit.config import Config

SPEC = EmulatorSpec(block_time=2.0, block_size=10000, latency={"Endorse": (0.020, 0.050)})


def run(ctx: Context) -> dict[str, Any]:
    emu = ctx.emulator("realistic", SPEC)
    identities = [i for i, _, _ in WORKLOAD]
    # 448 is about the largest limit whose whole wave of transactions is endorsed and submitted within
    # one 2 s block period on this 2-core box; past it the tail of the wave waits for the next block.
    limits = (1, 448, 512) if ctx.quick else (1, 4, 16, 64, 256, 448, 512)
    warmup, duration = (2.2, 5.0) if ctx.quick else (5.0, 30.0)
    configs = []
    for limit in limits:
        # At in-flight 1 every block holds one command from the start: no wave to settle.
        settle = min(warmup, 1.0) if limit == 1 else warmup
        schema = ctx.db.new_schema()
        sup = SupervisorProc(
            ctx.workdir,
            f"realistic-{limit}",
            database_url=ctx.db.url,
            schema=schema,
            gateway=emu.target,
            wallet=ctx.wallet,
            insecure=True,
            max_in_flight=limit,
        )
        population = len(identities) * limit  # the in-flight capacity, not above it
        stats = run_load(
            ctx,
            label=f"realistic in-flight {limit}",
            sups=[sup],
            emu=emu,
            schema=schema,
            types=workload_for(identities),
            target=population,
            warmup=settle,
            duration=duration,
            block_aligned=True,
        )
        stats["config"] = f"in-flight {limit}"
        stats["max_in_flight"] = limit
        configs.append(stats)
        ctx.db.drop_schema(schema)
    best = max(configs, key=lambda c: c.get("commands_per_s") or 0.0)
    ctx.shared["realistic_best"] = best
    # The target is throughput AND p99 <= 2 x block time in one configuration: the fastest limit that
    # keeps the latency bound (the fastest overall is reported too, with its p99).
    bounded = [c for c in configs if (c.get("p99_ms") or float("inf")) <= 2 * SPEC.block_time * 1000]
    within = max(bounded, key=lambda c: c.get("commands_per_s") or 0.0) if bounded else None
    # "Full in-flight" = the service's default limit (what operators run); larger limits are reported
    # per config in the realistic rows' rss column. Quick mode has no such row: the saturation
    # scenario's (default limit, every slot busy) is used then.
    default = Config().max_in_flight
    rss = next((c for c in configs if c.get("max_in_flight") == default), None)
    if rss is not None:
        ctx.shared["realistic_rss"] = rss
    return {
        "configs": configs,
        "best_config": best["config"],
        "best_within_latency_bound": within["config"] if within else None,
        "settings": {
            "emulator": SPEC.describe(),
            "identities": identities,
            "in_flight_limits": list(limits),
            "warmup_s": warmup,
            "window_s": duration,
            "rate": "whole block periods in the window (bench.common.block_rate); count / window kept "
            "as commands_per_s_window",
            "population": "identities x in-flight unfinished rows (= the in-flight capacity)",
        },
    }
