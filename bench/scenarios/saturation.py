"""Scenario 1, saturation: the emulator adds no latency (short blocks), 3 identities, 1 and 2 supervisors.

Measures committed commands/s and the CPU gxsubmit (supervisor + workers) spends per committed command,
with a closed population of unfinished rows large enough to keep every in-flight slot busy.
"""

from __future__ import annotations

from typing import Any

from bench.common import WORKLOAD, Context, EmulatorSpec, SupervisorProc, run_load, workload_for

SPEC = EmulatorSpec(block_time=0.1, block_size=1000)


def run(ctx: Context) -> dict[str, Any]:
    emu = ctx.emulator("fast", SPEC)
    identities = [i for i, _, _ in WORKLOAD]
    in_flight = 256
    warmup, duration = (1.0, 3.0) if ctx.quick else (5.0, 20.0)
    configs = []
    for n_sup in (1, 2):
        schema = ctx.db.new_schema()
        sups = [
            SupervisorProc(
                ctx.workdir,
                f"saturation-{n_sup}-{i}",
                database_url=ctx.db.url,
                schema=schema,
                gateway=emu.target,
                wallet=ctx.wallet,
                insecure=True,
                max_in_flight=in_flight,
            )
            for i in range(n_sup)
        ]
        stats = run_load(
            ctx,
            label=f"saturation {n_sup} supervisor(s)",
            sups=sups,
            emu=emu,
            schema=schema,
            types=workload_for(identities),
            target=2 * len(identities) * in_flight * n_sup,
            warmup=warmup,
            duration=duration,
        )
        stats["config"] = f"{n_sup} sup x 3 ids, in-flight {in_flight}"
        stats["supervisors"] = n_sup
        stats["max_in_flight"] = in_flight
        configs.append(stats)
        if n_sup == 1:
            ctx.shared["saturation_rss"] = stats  # every in-flight slot busy at the default limit
        ctx.db.drop_schema(schema)
    return {
        "configs": configs,
        "settings": {
            "emulator": SPEC.describe(),
            "identities": identities,
            "max_in_flight": in_flight,
            "warmup_s": warmup,
            "window_s": duration,
            "workload": [t for _, t, _ in WORKLOAD],
            "population": "2 x identities x in-flight x supervisors unfinished rows",
        },
    }
