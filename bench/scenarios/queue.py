"""Scenario 5, queue mechanics: claim-and-complete throughput of gxsubmit's outbox store alone (no gateway)
against procrastinate, pgqueuer (PyPI) and graphile-worker (npm), each draining the same number of no-op
jobs on the same PostgreSQL in the same run, each in its own schema and process (bench/queue_peers.py,
bench/node/graphile_drain.mjs), with the batching/concurrency settings their documentation recommends
for throughput. A system that cannot run here is recorded as skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

from bench.common import BENCH, Context, Progress, say


def _peer_runs(quick: bool) -> list[tuple[str, list[str]]]:
    jobs = "5000" if quick else "20000"
    py = [sys.executable, str(BENCH / "queue_peers.py")]
    return [
        ("gxsubmit-outbox", [*py, "gxsubmit-outbox", "--jobs", jobs, "--concurrency", "2", "--batch", "500"]),
        (
            "procrastinate",
            [*py, "procrastinate", "--jobs", "800" if quick else "4000", "--concurrency", "10"],
        ),
        ("pgqueuer", [*py, "pgqueuer", "--jobs", jobs, "--batch", "200"]),
        (
            "graphile-worker",
            [
                "node",
                str(BENCH / "node/graphile_drain.mjs"),
                "--jobs",
                jobs,
                "--concurrency",
                "10",
                "--batch",
                "500",
            ],
        ),
    ]


def _ensure_graphile() -> str | None:
    if not shutil.which("node") or not shutil.which("npm"):
        return "node/npm not installed"
    if (BENCH / "node/node_modules/graphile-worker").exists():
        return None
    say("bench: npm ci in bench/node")
    r = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=BENCH / "node",
        capture_output=True,
        text=True,
        timeout=300,
    )
    return None if r.returncode == 0 else f"npm ci failed: {r.stderr.strip()[-200:]}"


def run(ctx: Context) -> dict[str, Any]:
    configs: list[dict[str, Any]] = []
    prog = Progress("queue")
    for system, cmd in _peer_runs(ctx.quick):
        if system == "graphile-worker":
            why = _ensure_graphile()
            if why:
                configs.append({"config": system, "system": system, "skipped": why})
                continue
            url_args = ["--url", ctx.db.url if ctx.db.url.startswith("postgres") else _as_url(ctx.db.url)]
        else:
            url_args = ["--url", ctx.db.url]
        schema = (
            ctx.db.new_plain_schema()
            if system != "gxsubmit-outbox"
            else "gxq_" + ctx.db.new_plain_schema()[4:]
        )
        if system == "gxsubmit-outbox":
            ctx.db._schemas.append(schema)
        prog.tick(f"draining with {system}", force=True)
        try:
            r = subprocess.run(
                [*cmd, *url_args, "--schema", schema], capture_output=True, text=True, timeout=300, cwd=BENCH
            )
            if r.returncode != 0:
                configs.append(
                    {
                        "config": system,
                        "system": system,
                        "skipped": f"failed (exit {r.returncode}): {r.stderr.strip()[-240:]}",
                    }
                )
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            configs.append(
                {"config": system, "system": system, "skipped": f"{type(exc).__name__}: {exc}"[:240]}
            )
            continue
        finally:
            ctx.db.drop_schema(schema)
        res["config"] = system
        res["commands_per_s"] = res["jobs_per_s"]
        res["note"] = res.get("settings", "")
        configs.append(res)
        say(f"bench: queue {system}: {res['jobs_per_s']:.0f} jobs/s")
    return {
        "configs": configs,
        "settings": {
            "jobs": 5000 if ctx.quick else 20000,
            "timed": "drain only (bulk enqueue before, not timed)",
        },
    }


def _as_url(conninfo: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(conninfo)
    host, port, user, db = (
        p.get("host", "127.0.0.1"),
        p.get("port", "5432"),
        p.get("user", "postgres"),
        p["dbname"],
    )
    return f"postgresql://{user}@{host}:{port}/{db}"
