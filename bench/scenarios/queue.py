"""Scenario 5, queue mechanics: claim-and-complete throughput of gxsubmit's outbox store alone (no gateway)
against procrastinate, pgqueuer (PyPI) and graphile-worker (npm), each draining the same number of no-op
jobs on the same PostgreSQL in the same run, each in its own schema and process (bench/queue_peers.py,
bench/node/graphile_drain.mjs). Each system gets a small sweep of its throughput settings (gxsubmit:
connections x claim size x lanes/pipelined; graphile-worker: its documented performance preset and a
bigger local queue; pgqueuer: batch size; procrastinate: concurrency, as it fetches one job per query)
and is reported at its best, measured again in two confirmation runs so that the system with the most
configurations is not favoured by a lucky maximum. A system that cannot run here is recorded as skipped
with the reason. Beside them, not as a peer, runs a reference: the textbook batched SKIP LOCKED queue on a
three-column table, deleting or keeping finished rows, to show what PostgreSQL allows on this machine.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from typing import Any

from bench.common import BENCH, Context, Progress, say

#: Not a peer: the textbook batched SKIP LOCKED queue on a three-column table (bench/queue_peers.py), to
#: show what PostgreSQL allows any queue on this machine; the target compares gxsubmit with the peers only.
REFERENCE = "plain-skip-locked"


def _gx_configs(quick: bool) -> list[dict[str, Any]]:
    if quick:  # corners of the full sweep; claims of 200/500, 3 connections and 2 pipelined only in full mode
        return [
            {"connections": 1, "batch": 1000, "mode": "lanes"},
            {"connections": 2, "batch": 1000, "mode": "lanes"},
            {"connections": 4, "batch": 1000, "mode": "lanes"},
            {"connections": 4, "batch": 1000, "mode": "pipelined"},
        ]
    out: list[dict[str, Any]] = []
    for c in (1, 2, 3, 4):
        for b in (200, 500, 1000):
            out.append({"connections": c, "batch": b, "mode": "lanes"})
            if c > 1:
                out.append({"connections": c, "batch": b, "mode": "pipelined"})
    return out


def _peer_runs(quick: bool) -> list[tuple[str, int, list[str]]]:
    """(system, jobs, command) per system. Each command sweeps the system's settings in one process and
    re-runs the best twice; the mean of those runs is the reported rate (see bench/queue_peers.py)."""
    # gxsubmit and graphile-worker drain the same count. Quick used 10 000: a trial then lasted ~0.25 s and
    # its rate swung 21k..42k jobs/s between runs. Quick mode runs each peer at the setting that won its
    # full sweep (the documented presets included there), so the whole quick bench stays under 2 min.
    jobs = 20000 if quick else 40000
    py = [sys.executable, str(BENCH / "queue_peers.py")]
    # graphile-worker's documented performance setup is concurrentJobs 24, maxPoolSize 25,
    # localQueue.size 500, completeJobBatchDelay 0 (worker.graphile.org/docs/performance)
    graphile = [{"concurrency": 24, "queue": 1000, "delay": 0}]
    if not quick:
        graphile += [
            {"concurrency": 24, "queue": 500, "delay": 0},
            {"concurrency": 10, "queue": 500, "delay": 1},
            {"concurrency": 48, "queue": 1000, "delay": 0},
        ]
    procrastinate = [{"concurrency": 30, "delete_jobs": "never"}]
    if not quick:
        procrastinate += [
            {"concurrency": 10, "delete_jobs": "never"},
            {"concurrency": 10, "delete_jobs": "successful"},
            {"concurrency": 60, "delete_jobs": "never"},
        ]
    pgq = (
        [{"batch": 2500}]
        if quick
        else [{"batch": 100}, {"batch": 200}, {"batch": 1000}, {"batch": 2500}, {"batch": 5000}]
    )
    plain = [{"connections": c, "batch": 1000, "done": "delete"} for c in ((2,) if quick else (1, 2, 4))]
    plain.append({"connections": 2, "batch": 1000, "done": "keep"})
    return [
        (
            "gxsubmit-outbox",
            jobs,
            [*py, "gxsubmit-outbox", "--jobs", str(jobs), "--configs", json.dumps(_gx_configs(quick))],
        ),
        (
            REFERENCE,
            jobs,
            [*py, REFERENCE, "--jobs", str(jobs), "--configs", json.dumps(plain)],
        ),
        (
            "procrastinate",
            600 if quick else 4000,
            [
                *py,
                "procrastinate",
                "--jobs",
                "600" if quick else "4000",
                "--configs",
                json.dumps(procrastinate),
            ],
        ),
        (
            "pgqueuer",
            5000 if quick else 20000,
            [*py, "pgqueuer", "--jobs", "5000" if quick else "20000", "--configs", json.dumps(pgq)],
        ),
        (
            "graphile-worker",
            jobs,
            [
                "node",
                str(BENCH / "node/graphile_drain.mjs"),
                "--jobs",
                str(jobs),
                "--configs",
                json.dumps(graphile),
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
    for system, _jobs, cmd in _peer_runs(ctx.quick):
        if system == "graphile-worker":
            why = _ensure_graphile()
            if why:
                configs.append({"config": system, "system": system, "skipped": why})
                continue
            url_args = ["--url", ctx.db.url if ctx.db.url.startswith("postgres") else _as_url(ctx.db.url)]
        else:
            url_args = ["--url", ctx.db.url]
        schema = "gxq_" + secrets.token_hex(4)  # prefix: each trial makes and drops {prefix}_{i}
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
        res["config"] = system
        res["commands_per_s"] = res["jobs_per_s"]
        res["note"] = "best: " + res.get("settings", "")
        if system == REFERENCE:
            res["reference"] = True
            res["config"] = f"{system} (reference, not a peer)"
            keep = [t for t in res.get("trials", []) if "keep when done" in t["settings"]]
            res["note"] += "; keeping rows: " + ", ".join(f"{t['jobs_per_s']:.0f}/s" for t in keep)
        configs.append(res)
        say(
            f"bench: queue {system}: {res['jobs_per_s']:.0f} jobs/s ({res.get('settings')}); trials "
            + ", ".join(f"{t['jobs_per_s']:.0f}" for t in res.get("trials", []))
        )
    return {
        "configs": configs,
        "settings": {
            "jobs": {system: jobs for system, jobs, _ in _peer_runs(ctx.quick)},
            "timed": "drain only (bulk enqueue before, not timed); each configuration once in a fresh "
            "schema, then the best twice more: the reported rate is the mean of those two runs",
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
