"""Scenario 4, official client: the Node ``@hyperledger/fabric-gateway`` client (tests/node) submits the same
CREATE_USER transactions to the same emulator at the same concurrency as one gxsubmit worker.

Node's CPU comes from ``process.cpuUsage()`` over the measured batch (after a warm-up batch); gxsubmit's
from OS accounting of the supervisor and its one worker (identity org1-partner-api) over its window, so
gxsubmit's number also pays for its database work (claim, record, complete) and the supervisor.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

from bench.common import BENCH, REPO, Context, SupervisorProc, cpu_delta, run_load, say, workload_for
from bench.scenarios.saturation import SPEC

IDENTITY = "org1-partner-api"


def run(ctx: Context) -> dict[str, Any]:
    node = shutil.which("node")
    if not node:
        return {"skipped": "node is not installed"}
    if not (REPO / "tests/node/node_modules/@hyperledger/fabric-gateway").exists():
        if not (REPO / "tests/node/package-lock.json").exists():
            return {"skipped": "tests/node has no package-lock.json"}
        say("bench: npm ci in tests/node")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=REPO / "tests/node", check=True)
    emu = ctx.emulator("fast", SPEC)
    concurrency = 64
    count, warmup_n = (800, 200) if ctx.quick else (10000, 1000)
    e0 = emu.cpu()
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            node,
            str(BENCH / "node/submit_load.mjs"),
            "--target",
            emu.target,
            "--wallet",
            str(ctx.wallet),
            "--identity",
            IDENTITY,
            "--count",
            str(count),
            "--concurrency",
            str(concurrency),
            "--warmup",
            str(warmup_n),
            "--prefix",
            f"node{int(t0)}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    e1 = emu.cpu()
    if proc.returncode != 0:
        return {"skipped": f"node client failed: {proc.stderr.strip()[-300:]}"}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    total = res["ok"] + res["failed"]
    node_cfg = {
        "config": f"Node fabric-gateway {concurrency} concurrent",
        "client": "node",
        "commands_per_s": res["tx_per_s"],
        "client_cpu_ms_per_tx": res["cpu_ms_per_tx"],
        "gxsubmit_cpu_ms_per_command": None,
        "emulator_cpu_ms_per_command": cpu_delta(e0, e1) * 1000 / (total + warmup_n) if total else None,
        "peak_rss_mb": res["max_rss_mb"],
        "failed": res["failed"],
        "note": f"client CPU {res['cpu_ms_per_tx']:.3f} ms/tx (process.cpuUsage), no database",
    }
    schema = ctx.db.new_schema()
    sup = SupervisorProc(
        ctx.workdir,
        "official-gx",
        database_url=ctx.db.url,
        schema=schema,
        gateway=emu.target,
        wallet=ctx.wallet,
        insecure=True,
        identities=(IDENTITY,),
        max_in_flight=concurrency,
    )
    stats = run_load(
        ctx,
        label=f"gxsubmit 1 worker, in-flight {concurrency}",
        sups=[sup],
        emu=emu,
        schema=schema,
        types=workload_for([IDENTITY]),
        target=concurrency * 2,
        warmup=2.0,
        duration=3.0 if ctx.quick else 15.0,
    )
    ctx.db.drop_schema(schema)
    stats.update(
        {
            "config": f"gxsubmit 1 worker in-flight {concurrency}",
            "client": "gxsubmit",
            "note": "supervisor + worker CPU incl. DB work",
        }
    )
    return {
        "configs": [node_cfg, stats],
        "settings": {
            "emulator": SPEC.describe(),
            "concurrency": concurrency,
            "node_count": count,
            "node_warmup": warmup_n,
            "identity": IDENTITY,
            "transport": "plaintext gRPC (insecure)",
        },
    }
