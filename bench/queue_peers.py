"""Drain N no-op jobs through one queue implementation and print one JSON line (bench/scenarios/queue.py).

``python bench/queue_peers.py SYSTEM --url URL --schema PREFIX --jobs N --configs JSON``; SYSTEM is
gxsubmit-outbox, plain-skip-locked (the reference), procrastinate or pgqueuer; JSON is a list of
settings, one trial each. Jobs are enqueued in bulk first (not timed); the drain (claim/fetch -> run a
no-op -> mark done) is timed from the first fetch until the queue is empty. Each trial uses a fresh
schema (search_path), dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any


def _with_search_path(url: str, schema: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["options"] = f"-c search_path={schema}"
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


async def gxsubmit_outbox(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    """gxsubmit's store alone: ``OutboxStore.claim`` up to B rows per statement, ``mark_committed`` per batch.

    mode ``lanes``: C connections, each looping claim -> mark on its own connection.
    mode ``pipelined``: C connections shared; one claim at a time (as the worker claims), and the
    completion of each batch runs on another free connection while the next batch is claimed (at most
    C - 1 completions outstanding). With C = 1 both modes are the same sequential loop.
    """
    import psycopg

    from gxsubmit.outbox import Committed, OutboxStore, migrate

    conns, batch, mode = int(cfg["connections"]), int(cfg["batch"]), str(cfg["mode"])
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
        await migrate(conn, args.schema)
        await conn.execute(
            f'INSERT INTO "{args.schema}".outbox_commands (service, command_type, request_id, payload) '
            "SELECT 'bench', 'NOOP', 'q-' || g, '{}'::jsonb FROM generate_series(1, %s) g",
            (args.jobs,),
        )
        await conn.execute(f'ANALYZE "{args.schema}".outbox_commands')
    stores = [
        await OutboxStore.connect(args.url, schema=args.schema, worker_id=f"q{i}") for i in range(conns)
    ]
    done = 0

    def outcome(rows: list[Any]) -> list[Any]:
        return [Committed(c.id, c.lease_token, None, None, "VALID") for c in rows]

    async def lane(store: OutboxStore) -> None:
        nonlocal done
        while True:
            rows = await store.claim(["NOOP"], batch, 60.0)
            if not rows:
                return
            await store.mark_committed(outcome(rows))
            done += len(rows)

    free: asyncio.Queue[OutboxStore] = asyncio.Queue()
    for st in stores:
        free.put_nowait(st)

    async def complete(rows: list[Any]) -> None:
        nonlocal done
        st = await free.get()
        try:
            await st.mark_committed(outcome(rows))
        finally:
            free.put_nowait(st)
        done += len(rows)

    async def pipelined() -> None:
        pending: set[asyncio.Task[None]] = set()
        while True:
            st = await free.get()
            try:
                rows = await st.claim(["NOOP"], batch, 60.0)
            finally:
                free.put_nowait(st)
            if not rows:
                break
            task = asyncio.create_task(complete(rows))
            pending.add(task)
            task.add_done_callback(pending.discard)
            while len(pending) >= max(1, conns - 1):
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.gather(*pending)

    t0 = time.perf_counter()
    if mode == "pipelined" and conns > 1:
        await pipelined()
    else:
        await asyncio.gather(*(lane(s) for s in stores))
    seconds = time.perf_counter() - t0
    for st in stores:
        await st.close()
    return {
        "done": done,
        "seconds": seconds,
        "settings": f"{conns} conn, claim {batch}/statement, {mode if conns > 1 else 'sequential'}",
    }


async def procrastinate_drain(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    import logging

    import procrastinate

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    url = _with_search_path(args.url, args.schema)
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=url, min_size=1, max_size=int(cfg["concurrency"]) + 2
        )
    )
    done, t_end = 0, 0.0

    @app.task(name="noop")
    async def noop() -> None:
        nonlocal done, t_end
        done += 1
        if done >= args.jobs:  # the drain ends when the last job ran, not at shutdown
            t_end = time.perf_counter()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, args.jobs, 1000):
            await noop.batch_defer_async(*({} for _ in range(min(1000, args.jobs - start))))
        t0 = time.perf_counter()
        await app.run_worker_async(
            concurrency=int(cfg["concurrency"]),
            wait=False,
            listen_notify=False,
            install_signal_handlers=False,
            delete_jobs=str(cfg["delete_jobs"]),
            fetch_job_polling_interval=0.001,
        )
        seconds = (t_end or time.perf_counter()) - t0
    return {
        "done": done,
        "seconds": seconds,
        "settings": f"concurrency {cfg['concurrency']}, poll 1 ms, wait=False, "
        f"delete_jobs={cfg['delete_jobs']} (one job per fetch: procrastinate has no batch fetch)",
    }


async def pgqueuer_drain(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    import logging
    from datetime import timedelta

    import psycopg
    from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
    from pgqueuer.adapters.persistence.queries import Queries
    from pgqueuer.core.qm import QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    url = _with_search_path(args.url, args.schema)
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    queries = Queries(PsycopgDriver(conn))
    await queries.install()
    for start in range(0, args.jobs, 5000):
        n = min(5000, args.jobs - start)
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
    qm = QueueManager(queries)
    done, t_end = 0, 0.0

    @qm.entrypoint("noop")
    async def noop(job: Any) -> None:
        nonlocal done, t_end
        done += 1
        if done >= args.jobs:  # the drain ends when the last job ran; then stop (shutdown is not timed)
            t_end = time.perf_counter()
            qm.shutdown.set()

    t0 = time.perf_counter()
    run = asyncio.create_task(
        qm.run(
            batch_size=int(cfg["batch"]),
            mode=QueueExecutionMode.drain,
            dequeue_timeout=timedelta(seconds=1),
            log_aggregation_interval=timedelta(0),
        )
    )
    finished = asyncio.create_task(qm.shutdown.wait())
    await asyncio.wait({run, finished}, return_when=asyncio.FIRST_COMPLETED)
    # the drain is over when the last job ran; pgqueuer's exit after that takes ~5 s here whatever
    # the job count (not timed), so give it a moment and cancel it
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(run, 0.3)
    finished.cancel()
    seconds = (t_end or time.perf_counter()) - t0
    await conn.close()
    return {
        "done": done,
        "seconds": seconds,
        "settings": f"batch_size {cfg['batch']}, drain mode, one connection",
    }


async def plain_skip_locked(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    """The reference, not a peer: the textbook batched SKIP LOCKED queue on a table with nothing else in it.

    ``jobs(id bigserial primary key, locked_at timestamptz)`` plus a partial index of unlocked ids; each of
    C connections loops: lock up to B unlocked ids (``FOR UPDATE SKIP LOCKED``, oldest first) and mark them,
    then ``DELETE`` them (``done`` = "delete") or mark them finished and keep them (``done`` = "keep", the
    retention gxsubmit's contract asks for). No payload, lease, status, attempt or error columns: what this
    drains is about what PostgreSQL allows a queue on this machine at all.
    """
    import psycopg

    conns, batch, done_mode = int(cfg["connections"]), int(cfg["batch"]), str(cfg["done"])
    q = f'"{args.schema}".jobs'
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE {q} (id bigserial PRIMARY KEY, locked_at timestamptz, finished_at timestamptz)"
        )
        await conn.execute(f'CREATE INDEX ON {q} (id) WHERE locked_at IS NULL')
        await conn.execute(f"INSERT INTO {q} (locked_at) SELECT NULL FROM generate_series(1, %s)",
                           (args.jobs,))
        await conn.execute(f"ANALYZE {q}")
    claim = (
        f"UPDATE {q} SET locked_at = now() WHERE id IN (SELECT id FROM {q} WHERE locked_at IS NULL "
        f"ORDER BY id LIMIT {batch} FOR UPDATE SKIP LOCKED) RETURNING id"
    )
    finish = (
        f"DELETE FROM {q} WHERE id = ANY(%s)" if done_mode == "delete"
        else f"UPDATE {q} SET finished_at = now() WHERE id = ANY(%s)"
    )
    done = 0

    async def lane(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal done
        while True:
            ids = [r[0] for r in await (await conn.execute(claim)).fetchall()]
            if not ids:
                return
            await conn.execute(finish, (ids,))
            done += len(ids)

    lanes = [await psycopg.AsyncConnection.connect(args.url, autocommit=True) for _ in range(conns)]
    t0 = time.perf_counter()
    await asyncio.gather(*(lane(c) for c in lanes))
    seconds = time.perf_counter() - t0
    for c in lanes:
        await c.close()
    return {"done": done, "seconds": seconds,
            "settings": f"{conns} conn, claim {batch}/statement, {done_mode} when done"}


SYSTEMS = {
    "gxsubmit-outbox": gxsubmit_outbox,
    "plain-skip-locked": plain_skip_locked,
    "procrastinate": procrastinate_drain,
    "pgqueuer": pgqueuer_drain,
}


async def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _trial(args: argparse.Namespace, cfg: dict[str, Any], schema: str) -> dict[str, Any]:
    """One drain in a fresh schema of its own (dropped afterwards), so no trial sees another's dead rows."""
    import psycopg

    if args.system != "gxsubmit-outbox":
        async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    sub = argparse.Namespace(**{**vars(args), "schema": schema})
    try:
        res = await SYSTEMS[args.system](sub, cfg)
    finally:
        await _drop_schema(args.url, schema)
    res["params"] = cfg
    res["jobs_per_s"] = res["done"] / res["seconds"]
    return res


async def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Every configuration once, then the best one twice more: the reported rate is the mean of those two
    confirmation runs, independent samples, so a system with more configurations is not favoured by
    picking a lucky maximum.
    """
    configs = json.loads(args.configs)
    trials = [await _trial(args, cfg, f"{args.schema}_{i}") for i, cfg in enumerate(configs)]
    best = max(trials, key=lambda t: t["jobs_per_s"])
    confirm = [await _trial(args, best["params"], f"{args.schema}_c{k}") for k in range(2)]
    return {
        "done": sum(c["done"] for c in confirm),
        "seconds": sum(c["seconds"] for c in confirm),
        "jobs_per_s": sum(c["jobs_per_s"] for c in confirm) / len(confirm),
        "confirm_jobs_per_s": [round(c["jobs_per_s"], 1) for c in confirm],
        "settings": best["settings"],
        "params": best["params"],
        "sweep_best_jobs_per_s": best["jobs_per_s"],
        "trials": [{"settings": t["settings"], "jobs_per_s": round(t["jobs_per_s"], 1)} for t in trials],
    }


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("system", choices=sorted(SYSTEMS))
    p.add_argument("--url", required=True)
    p.add_argument("--schema", required=True, help="prefix of the per-trial schemas")
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--configs", required=True, help="JSON list of settings dicts, one trial each")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(sweep(args))
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    res.update({"system": args.system, "jobs": args.jobs, "cpu_s_total": ru.ru_utime + ru.ru_stime})
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
