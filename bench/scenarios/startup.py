"""Scenario 7, start-up and memory.

Start-up: wall time from spawning ``python -m gxsubmit supervise`` (3 identities) to the first
/readyz 200, polled every 10 ms, over a few fresh starts. Memory: peak RSS (VmHWM from /proc, read just
before shutdown) of the supervisor and each worker with every in-flight slot busy: taken from the
realistic scenario's largest in-flight limit when it ran in this invocation, else measured here.
"""

from __future__ import annotations

from typing import Any

from bench.common import WORKLOAD, Context, SupervisorProc, run_load, workload_for
from bench.scenarios.realistic import SPEC as REALISTIC
from bench.scenarios.saturation import SPEC as FAST


def run(ctx: Context) -> dict[str, Any]:
    emu = ctx.emulator("fast", FAST)
    schema = ctx.db.new_schema()
    samples = []
    for i in range(2 if ctx.quick else 5):
        sup = SupervisorProc(
            ctx.workdir,
            f"startup-{i}",
            database_url=ctx.db.url,
            schema=schema,
            gateway=emu.target,
            wallet=ctx.wallet,
            insecure=True,
        )
        sup.start()
        try:
            samples.append(sup.wait_ready(60.0))
        finally:
            sup.stop()
    configs: list[dict[str, Any]] = [
        {
            "config": "startup",
            "ready_s": [round(s, 3) for s in samples],
            "ready_s_max": max(samples),
            "ready_s_min": min(samples),
            "note": "spawn -> /readyz 200: " + ", ".join(f"{s:.2f}s" for s in samples),
        }
    ]
    mem = ctx.shared.get("realistic_rss")
    source = f"realistic scenario, in-flight {(mem or {}).get('max_in_flight')}"
    if not mem and ctx.shared.get("saturation_rss"):
        mem = ctx.shared["saturation_rss"]
        limit = mem.get("max_in_flight", 256)
        source = f"saturation scenario, 1 supervisor, in-flight {limit}, every slot busy"
    if not mem or "peak_rss_mb" not in mem:
        remu = ctx.emulator("realistic", REALISTIC)
        identities = [i for i, _, _ in WORKLOAD]
        sup = SupervisorProc(
            ctx.workdir,
            "memory",
            database_url=ctx.db.url,
            schema=schema,
            gateway=remu.target,
            wallet=ctx.wallet,
            insecure=True,
            max_in_flight=256,
        )
        mem = run_load(
            ctx,
            label="memory at full in-flight",
            sups=[sup],
            emu=remu,
            schema=schema,
            types=workload_for(identities),
            target=3 * 256 + 64,
            warmup=3.0,
            duration=3.0,
        )
        source = "own run, in-flight 256, 2 s blocks"
    ctx.db.drop_schema(schema)
    configs.append(
        {
            "config": "memory",
            "peak_rss_mb": mem.get("peak_rss_mb"),
            "peak_rss_by_process_mb": mem.get("peak_rss_by_process_mb"),
            "note": f"VmHWM sum, per process {mem.get('peak_rss_by_process_mb')} ({source})",
        }
    )
    return {"configs": configs, "settings": {"identities": [i for i, _, _ in WORKLOAD]}}
