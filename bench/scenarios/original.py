"""Scenario 3, the original algorithm: poll every 100 ms, claim 10, submit one at a time and wait for each
commit (docs/design.md#the-worker-it-replaces), on the same emulator as the realistic scenario, in the
same run.

Implemented in bench/original_worker.py with gxsubmit's own store and Fabric client (the more faithful
option: the algorithm, not the code, is what is compared). Its rate is measured over a fixed window.
"""

from __future__ import annotations

from typing import Any

from bench.common import WORKLOAD, Context, OriginalProc, run_load, workload_for
from bench.scenarios.realistic import SPEC


def run(ctx: Context) -> dict[str, Any]:
    emu = ctx.emulator("realistic", SPEC)
    identities = [i for i, _, _ in WORKLOAD]
    warmup, duration = (1.5, 8.0) if ctx.quick else (4.0, 60.0)
    schema = ctx.db.new_schema()
    proc = OriginalProc(
        ctx.workdir, "original", url=ctx.db.url, schema=schema, gateway=emu.target, wallet=ctx.wallet
    )
    stats = run_load(
        ctx,
        label="original algorithm",
        sups=[proc],
        emu=emu,
        schema=schema,  # type: ignore[list-item]
        types=workload_for(identities),
        target=30,
        warmup=warmup,
        duration=duration,
        block_aligned=True,
    )
    ctx.db.drop_schema(schema)
    stats["config"] = "poll 100ms, claim 10, sequential"
    stats["note"] = "sequential: one commit wait per command"
    return {
        "configs": [stats],
        "settings": {
            "emulator": SPEC.describe(),
            "batch_size": 10,
            "poll_interval_s": 0.1,
            "warmup_s": warmup,
            "window_s": duration,
            "implementation": "bench/original_worker.py: gxsubmit.outbox store + gxsubmit.fabric "
            "client driven sequentially (not the real worker with flags)",
        },
    }
