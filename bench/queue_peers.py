"""Drain N no-op jobs through one queue implementation and print one JSON line (bench/scenarios/queue.py).

``python bench/queue_peers.py SYSTEM --url URL --schema S --jobs N``; SYSTEM is gxsubmit-outbox, procrastinate
or pgqueuer. Jobs are enqueued in bulk first (not timed); the drain (claim/fetch -> run a no-op -> mark done)
is timed from the first fetch until the queue is empty. Each system uses its own schema (search_path).
"""

from __future__ import annotations

import argparse
import asyncio
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


async def gxsubmit_outbox(args: argparse.Namespace) -> dict[str, Any]:
    """gxsubmit's store alone: claim up to B rows per statement, mark them committed in one statement."""
    import psycopg

    from gxsubmit.outbox import Committed, OutboxStore, migrate

    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as conn:
        await migrate(conn, args.schema)
        await conn.execute(
            f'INSERT INTO "{args.schema}".outbox_commands (service, command_type, request_id, payload) '
            "SELECT 'bench', 'NOOP', 'q-' || g, '{}'::jsonb FROM generate_series(1, %s) g",
            (args.jobs,),
        )
    stores = [
        await OutboxStore.connect(args.url, schema=args.schema, worker_id=f"q{i}")
        for i in range(args.concurrency)
    ]
    done = 0

    async def consumer(store: OutboxStore) -> None:
        nonlocal done
        while True:
            batch = await store.claim(["NOOP"], args.batch, 60.0)
            if not batch:
                return
            await store.mark_committed([Committed(c.id, c.lease_token, None, None, "VALID") for c in batch])
            done += len(batch)

    t0 = time.perf_counter()
    await asyncio.gather(*(consumer(s) for s in stores))
    seconds = time.perf_counter() - t0
    for s in stores:
        await s.close()
    return {
        "done": done,
        "seconds": seconds,
        "settings": f"{args.concurrency} connections, claim {args.batch}/statement, batch mark_committed",
    }


async def procrastinate_drain(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    import procrastinate

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    url = _with_search_path(args.url, args.schema)
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=args.concurrency + 2)
    )
    done = 0

    @app.task(name="noop")
    async def noop() -> None:
        nonlocal done
        done += 1

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, args.jobs, 1000):
            await noop.batch_defer_async(*({} for _ in range(min(1000, args.jobs - start))))
        t0 = time.perf_counter()
        await app.run_worker_async(
            concurrency=args.concurrency,
            wait=False,
            listen_notify=False,
            install_signal_handlers=False,
            delete_jobs="successful",
            fetch_job_polling_interval=0.001,
        )
        seconds = time.perf_counter() - t0
    return {
        "done": done,
        "seconds": seconds,
        "settings": f"concurrency {args.concurrency}, poll 1 ms, wait=False, delete_jobs=successful "
        "(fetches one job per "
        "query: no batch fetch in procrastinate)",
    }


async def pgqueuer_drain(args: argparse.Namespace) -> dict[str, Any]:
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
    done = 0

    @qm.entrypoint("noop")
    async def noop(job: Any) -> None:
        nonlocal done
        done += 1

    t0 = time.perf_counter()
    await qm.run(
        batch_size=args.batch,
        mode=QueueExecutionMode.drain,
        dequeue_timeout=timedelta(seconds=1),
        log_aggregation_interval=timedelta(0),
    )
    seconds = time.perf_counter() - t0
    await conn.close()
    return {
        "done": done,
        "seconds": seconds,
        "settings": f"batch_size {args.batch}, drain mode, one connection",
    }


SYSTEMS = {
    "gxsubmit-outbox": gxsubmit_outbox,
    "procrastinate": procrastinate_drain,
    "pgqueuer": pgqueuer_drain,
}


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("system", choices=sorted(SYSTEMS))
    p.add_argument("--url", required=True)
    p.add_argument("--schema", required=True)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--batch", type=int, default=100)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(SYSTEMS[args.system](args))
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    res.update(
        {
            "system": args.system,
            "jobs": args.jobs,
            "jobs_per_s": res["done"] / res["seconds"],
            "cpu_s_total": ru.ru_utime + ru.ru_stime,
        }
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
