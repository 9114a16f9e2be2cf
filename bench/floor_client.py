"""The CPU floor under gxsubmit: its own Fabric client code, with no database, queue or supervisor.

``python bench/floor_client.py --target HOST:PORT --wallet DIR --identity NAME [--in-flight N]``

One process per identity, as gxsubmit runs its workers: ``--in-flight`` loops that each build and sign a
proposal (the catalogue's arguments for a fresh payload), Endorse, Submit, and wait for the commit on
the filtered-block stream, exactly the calls and code a worker makes (``gxsubmit.fabric``), and nothing
else. What one command costs here is what the stack gxsubmit is built on (grpcio, cryptography,
protobuf, asyncio with uvloop) costs; the saturation scenario's gap to it is gxsubmit's own work.

It prints ``ready`` once the block stream is live; each SIGUSR1 records the number of commits so far
(the harness sends one at each window edge, reading the CPU of this process at the same moment);
SIGTERM stops it, and it prints ``{"marks": [...], "failed": N}`` as JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop

from gxsubmit.catalog import load_catalog
from gxsubmit.fabric.client import GatewayClient
from gxsubmit.fabric.commits import CommitWatcher
from gxsubmit.fabric.errors import FabricError
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import build_proposal, new_nonce
from gxsubmit.wallet import load_identity

#: The saturation workload's command type per identity, and a fresh payload for the n-th command.
PAYLOADS: dict[str, tuple[str, Any]] = {
    "org1-partner-api": (
        "CREATE_USER",
        lambda p, n: {"userId": f"u-{p}-{n}", "biometricHash": os.urandom(32).hex(), "nationality": "US",
                      "age": 30},
    ),
    "org1-admin": (
        "PROPOSE_ORGANIZATION",
        lambda p, n: {"orgId": f"org-{p}-{n}", "orgName": f"Org {n}", "orgType": "BUSINESS",
                      "stakeholderIds": [f"s1-{n}", f"s2-{n}"]},
    ),
    "org1-super-admin": ("APPOINT_ADMIN", lambda p, n: {"newAdminId": f"a-{p}-{n}"}),
}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    command_type, payload = PAYLOADS[args.identity]
    route = load_catalog().route(command_type)
    assert route is not None
    wallet = load_identity(Path(args.wallet), args.identity, msp_id=args.msp_id, expected_role=None)
    signer = SigningIdentity.from_wallet(wallet)
    client = GatewayClient(target=args.target, tls_root=None)
    await client.wait_ready(10)
    stop = asyncio.Event()
    live = asyncio.Event()
    watcher = CommitWatcher(client, lambda: signer, route.channel,
                            on_state=lambda up: live.set() if up else live.clear())
    follow = asyncio.create_task(watcher.run(stop))
    await asyncio.wait_for(live.wait(), 30)
    committed, failed, marks = 0, 0, []
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: marks.append(committed))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    prefix = f"floor{os.getpid()}x{os.urandom(3).hex()}"
    counter = iter(range(1 << 62))

    async def one_loop() -> None:
        nonlocal committed, failed
        while not stop.is_set():
            p = build_proposal(signer, channel=route.channel, chaincode=route.chaincode,
                               function=route.function, args=route.build_args(payload(prefix, next(counter))),
                               nonce=new_nonce())
            try:
                prepared = await client.endorse(p)
                wait = watcher.expect(p.tx_id)
                await client.submit(signer, prepared)
                result = await wait if wait is not None else None
            except FabricError:
                failed += 1
                continue
            if result is not None and result.valid:
                committed += 1
            else:
                failed += 1

    loops = [asyncio.create_task(one_loop()) for _ in range(args.in_flight)]
    print("ready", flush=True)
    await stop.wait()
    for t in (*loops, follow):
        t.cancel()
    await asyncio.gather(*loops, follow, return_exceptions=True)
    await client.close()
    return {"marks": marks, "failed": failed}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--wallet", required=True)
    ap.add_argument("--identity", required=True, choices=sorted(PAYLOADS))
    ap.add_argument("--msp-id", default="Org1MSP")
    ap.add_argument("--in-flight", type=int, default=256)
    print(json.dumps(uvloop.run(main(ap.parse_args()))), flush=True)
