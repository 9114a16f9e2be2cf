"""Drive a running emulator with N concurrent endorse/submit/commit-status flows (a CPU probe).

Run it as a separate process from the emulator so that the emulator's CPU per committed
transaction can be read from its own process (``gxsubmit emulator`` prints it at shutdown):

    python -m gxsubmit.emulator.loadgen --target 127.0.0.1:7051 --wallet DIR -n 6000 -c 200
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from pathlib import Path

from gxsubmit.fabric.client import Deadlines, GatewayClient
from gxsubmit.fabric.errors import FabricError
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import build_proposal, new_nonce
from gxsubmit.wallet import DEFAULT_IDENTITIES, load_identity

__all__ = ["main"]

_ORGS = ("Org1MSP", "Org2MSP")


async def _drive(target: str, wallet: Path, total: int, concurrency: int, tag: str) -> dict[str, float]:
    wi = load_identity(wallet, "org1-admin", msp_id="Org1MSP", expected_role=DEFAULT_IDENTITIES["org1-admin"])
    me = SigningIdentity.from_wallet(wi)
    counter = itertools.count()
    stats = {"valid": 0.0, "invalid": 0.0, "errors": 0.0}
    deadlines = Deadlines(evaluate=30.0, endorse=30.0, submit=30.0, commit_status=60.0)
    async with GatewayClient(target=target, tls_root=None, deadlines=deadlines) as client:
        await client.wait_ready(10.0)

        async def flow() -> None:
            while (i := next(counter)) < total:
                p = build_proposal(
                    me,
                    channel="gxchannel",
                    chaincode="gxtv3",
                    function="GovernanceContract:SubmitProposal",
                    args=[f"{tag}-{i}", "v"],
                    nonce=new_nonce(),
                    endorsing_orgs=_ORGS,
                )
                try:
                    prepared = await client.endorse(p)
                    await client.submit(me, prepared)
                    res = await client.commit_status(me, channel="gxchannel", tx_id=p.tx_id)
                except FabricError:
                    stats["errors"] += 1
                    continue
                stats["valid" if res.valid else "invalid"] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(flow() for _ in range(concurrency)))
        stats["seconds"] = time.monotonic() - t0
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gxsubmit.emulator.loadgen")
    ap.add_argument("--target", required=True, metavar="HOST:PORT")
    ap.add_argument("--wallet", required=True, type=Path)
    ap.add_argument("-n", "--total", type=int, default=2000)
    ap.add_argument("-c", "--concurrency", type=int, default=200)
    ap.add_argument("--tag", default=f"load-{int(time.time())}")
    args = ap.parse_args(argv)
    st = asyncio.run(_drive(args.target, args.wallet, args.total, args.concurrency, args.tag))
    rate = (st["valid"] + st["invalid"]) / st["seconds"] if st["seconds"] else 0.0
    print(
        f"loadgen: valid={int(st['valid'])} invalid={int(st['invalid'])} errors={int(st['errors'])} "
        f"seconds={st['seconds']:.2f} rate={rate:.0f} tx/s",
        flush=True,
    )
    return 0 if st["errors"] == 0 and st["invalid"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
