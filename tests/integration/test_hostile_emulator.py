"""GatewayClient against the emulator's hostile mode (every answer hostile), over real sockets: every
call either gives the true answer or raises our own FabricError, never anything else."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gxsubmit.fabric.client import Deadlines, GatewayClient
from gxsubmit.fabric.errors import FabricError
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import build_proposal, new_nonce
from gxsubmit.wallet import DEFAULT_IDENTITIES, load_identity

CHANNEL, CHAINCODE = "gxchannel", "gxtv3"
ROUNDS = int(os.environ.get("GXSUBMIT_HOSTILE_ROUNDS", "40"))


def _identity(wallet: Path) -> SigningIdentity:
    wi = load_identity(wallet, "org1-partner-api", msp_id="Org1MSP",
                       expected_role=DEFAULT_IDENTITIES["org1-partner-api"])
    return SigningIdentity.from_wallet(wi)


async def test_every_answer_hostile(start_emulator: Callable[..., Any], wallet: Path) -> None:
    emu, _ = start_emulator(seed=16)
    ident = _identity(wallet)
    deadlines = Deadlines(evaluate=5.0, endorse=5.0, submit=5.0, commit_status=5.0)
    target = f"127.0.0.1:{emu.port}"
    async with GatewayClient(target=target, tls_root=None, deadlines=deadlines) as gw:
        # One honest commit to ask about.
        p = build_proposal(ident, channel=CHANNEL, chaincode=CHAINCODE,
                           function="IdentityContract:CreateUser",
                           args=["hostile-1", "a" * 64, "MY", "30"], nonce=new_nonce(),
                           endorsing_orgs=("Org1MSP", "Org2MSP"))
        await gw.submit(ident, await gw.endorse(p))
        truth = await gw.commit_status(ident, channel=CHANNEL, tx_id=p.tx_id)
        assert truth.valid and truth.block_number >= 1

        emu.faults.hostile = 1.0
        errors: dict[str, int] = {}
        for i in range(ROUNDS):
            try:
                res = await gw.commit_status(ident, channel=CHANNEL, tx_id=p.tx_id)
                assert res == truth  # an answer that got through is the true one
            except FabricError as err:
                errors[err.error_code] = errors.get(err.error_code, 0) + 1
            q = build_proposal(ident, channel=CHANNEL, chaincode=CHAINCODE,
                               function="IdentityContract:CreateUser",
                               args=[f"hostile-e{i}", "a" * 64, "MY", "30"], nonce=new_nonce(),
                               endorsing_orgs=("Org1MSP", "Org2MSP"))
            try:
                prepared = await gw.endorse(q)
                assert prepared.tx_id == q.tx_id
            except FabricError as err:
                errors[err.error_code] = errors.get(err.error_code, 0) + 1
            try:
                assert await gw.transaction_known(ident, channel=CHANNEL, tx_id=p.tx_id)
            except FabricError as err:
                errors[err.error_code] = errors.get(err.error_code, 0) + 1

        # The block stream: blocks, then a FabricError or nothing more (it waits for the next block),
        # never another exception.
        async def follow() -> None:
            async for block in gw.filtered_blocks(ident, channel=CHANNEL, start_block=0):
                assert 0 <= block.number <= truth.block_number + 5

        for _ in range(10):
            try:
                await asyncio.wait_for(follow(), 2)
            except FabricError as err:
                errors[err.error_code] = errors.get(err.error_code, 0) + 1
            except TimeoutError:
                errors["stream_waiting"] = errors.get("stream_waiting", 0) + 1
        assert errors  # the peer was hostile indeed
        assert emu.stats()["hostile"] >= ROUNDS
