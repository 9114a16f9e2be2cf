"""Scenario 1, saturation: the emulator adds no latency (short blocks), 3 identities, 1 and 2 supervisors.

Measures committed commands/s and the CPU gxsubmit (supervisor + workers) spends per committed command,
with a closed population of unfinished rows large enough to keep every in-flight slot busy.

Then the **floor**: ``bench/floor_client.py``, gxsubmit's own Fabric client code with no database, queue,
pipeline or supervisor, one process per identity at the same in-flight, on the same emulator. Its CPU per
command is what the stack underneath (grpcio, cryptography, protobuf, uvloop) costs by itself; the
1-supervisor row minus the floor is what gxsubmit adds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from bench.common import (
    BENCH,
    WORKLOAD,
    Context,
    EmulatorProc,
    EmulatorSpec,
    Progress,
    SupervisorProc,
    child_env,
    cpu_delta,
    cpu_seconds,
    run_load,
    workload_for,
)

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
    try:
        # quick: a shorter window than the supervisors' (the whole quick run must stay under 2 minutes)
        window = (0.5, 2.0) if ctx.quick else (warmup, duration)
        configs.append(floor(ctx, emu, identities, in_flight, *window))
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        configs.append({"config": "floor: bare client", "floor": True, "skipped": str(exc)})
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


def floor(
    ctx: Context, emu: EmulatorProc, identities: list[str], in_flight: int, warmup: float, duration: float
) -> dict[str, Any]:
    """The bare client's window: commits counted by the clients at SIGUSR1, CPU read at the same moment."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(BENCH / "floor_client.py"), "--target", emu.target, "--wallet",
             str(ctx.wallet), "--identity", ident, "--in-flight", str(in_flight)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        )
        for ident in identities
    ]
    prog = Progress("saturation floor (bare client)")
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"floor client did not start: {line or p.communicate()[1][-500:]}")
        pids = [p.pid for p in procs]

        def mark() -> tuple[float, dict[int, float], dict[int, float]]:
            for p in procs:
                p.send_signal(signal.SIGUSR1)
            return time.monotonic(), cpu_seconds(pids), emu.cpu()

        t_end = time.monotonic() + warmup
        while time.monotonic() < t_end:
            prog.tick("warm-up")
            time.sleep(0.1)
        a = mark()
        while time.monotonic() - a[0] < duration:
            prog.tick(f"measuring {time.monotonic() - a[0]:4.1f}/{duration:g}s")
            time.sleep(0.1)
        b = mark()
        outs = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            out, err = p.communicate(timeout=30)
            if p.returncode != 0:
                raise RuntimeError(f"floor client exited {p.returncode}: {err.strip()[-500:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    done = sum(o["marks"][1] - o["marks"][0] for o in outs)
    secs = b[0] - a[0]
    return {
        "config": f"floor: bare client, {len(identities)} ids x {in_flight}, no DB",
        "floor": True,
        "commands_per_s": done / secs if secs > 0 else None,
        "gxsubmit_cpu_ms_per_command": cpu_delta(a[1], b[1]) * 1000 / done if done else None,
        "emulator_cpu_ms_per_command": cpu_delta(a[2], b[2]) * 1000 / done if done else None,
        "failed": sum(o["failed"] for o in outs),
        "window_s": secs,
        "note": "gxsubmit.fabric alone: no database, queue or supervisor",
    }
