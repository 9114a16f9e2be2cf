"""The original outbox-submitter's algorithm, rebuilt from gxsubmit's parts for a same-run baseline.

docs/design.md#the-worker-it-replaces: one loop per process; claim up to 10 rows; process them one at a
time in claim order, waiting for each Fabric commit before starting the next; a queue-depth COUNT after each
batch (and when nothing was claimed); then wait the poll interval (100 ms) and poll again. No NOTIFY,
no parallelism. It uses gxsubmit's store (claim / mark_submitted / mark_committed) and Fabric client
(endorse / submit / commit_status), so only the algorithm differs from the service being measured.

Run by bench/scenarios/original.py: ``python bench/original_worker.py --url URL --schema S --gateway
HOST:PORT --wallet DIR --ready-file F``; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any


async def main(args: argparse.Namespace) -> int:
    import psycopg

    from gxsubmit.catalog import load_catalog
    from gxsubmit.fabric.client import GatewayClient
    from gxsubmit.fabric.identity import SigningIdentity
    from gxsubmit.fabric.proposal import build_proposal, new_nonce
    from gxsubmit.outbox import Committed, OutboxStore
    from gxsubmit.wallet import load_identity

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    catalog = load_catalog()
    identities: dict[str, SigningIdentity] = {}
    for name, role in catalog.identities.items():
        wi = load_identity(Path(args.wallet), name, msp_id="Org1MSP", expected_role=role)
        identities[name] = SigningIdentity.from_wallet(wi)
    types = catalog.all_types()
    store = await OutboxStore.connect(args.url, schema=args.schema, worker_id="original")
    depth_conn = await psycopg.AsyncConnection.connect(args.url, autocommit=True)
    client = GatewayClient(target=args.gateway, tls_root=None)
    await client.wait_ready(10.0)
    Path(args.ready_file).write_text("ready\n")  # noqa: ASYNC240 - once, at start
    depth_sql = f"SELECT count(*) FROM \"{args.schema}\".outbox_commands WHERE status = 'PENDING'"
    committed = 0
    try:
        while not stop.is_set():
            batch = await store.claim(types, args.batch_size, 300.0)
            for cmd in batch:
                if stop.is_set():
                    break
                route: Any = catalog.route(cmd.command_type)
                ident = identities[route.identity]
                prop = build_proposal(
                    ident,
                    channel=route.channel,
                    chaincode=route.chaincode,
                    function=route.function,
                    args=route.build_args(cmd.payload),
                    nonce=new_nonce(),
                    endorsing_orgs=("Org1MSP", "Org2MSP"),
                )
                prepared = await client.endorse(prop)
                await client.submit(ident, prepared)
                await store.mark_submitted([(cmd.id, cmd.lease_token)])
                result = await client.commit_status(ident, channel=route.channel, tx_id=prop.tx_id)
                await store.mark_committed(
                    [Committed(cmd.id, cmd.lease_token, prop.tx_id, result.block_number, result.code_name)]
                )
                committed += 1
            await depth_conn.execute(depth_sql)  # the queue-depth gauge refresh
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.poll_interval)
    finally:
        await client.close()
        await store.close()
        await depth_conn.close()
    print(f"original: committed {committed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--schema", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--wallet", required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--poll-interval", type=float, default=0.1)
    sys.exit(asyncio.run(main(p.parse_args())))
