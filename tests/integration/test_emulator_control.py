"""The emulator's --control file changes its added latency while it runs (the soak's slow endorsements)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_for

from gxsubmit.fabric import Deadlines, FabricError, GatewayClient, SigningIdentity
from gxsubmit.gatewayprobe import PROBE_TX_ID
from gxsubmit.wallet import load_identity


def _control(path: Path, latency: dict[str, list[float]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"latency": latency}))
    os.replace(tmp, path)


def test_control_file_adds_and_removes_latency(wallet: Path, tmp_path: Path) -> None:
    control, ready, log = tmp_path / "control.json", tmp_path / "port", tmp_path / "emulator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gxsubmit", "emulator", "--listen", "127.0.0.1:0", "--wallet", str(wallet),
             "--ledger", str(tmp_path / "ledger.jsonl"), "--insecure", "--ready-file", str(ready),
             "--control", str(control)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        port = wait_for(lambda: ready.exists() and ready.read_text().strip(), 30, what="emulator port")
        signer = SigningIdentity.from_wallet(load_identity(wallet, "org1-admin", msp_id="Org1MSP",
                                                         expected_role=None))

        async def lookup(deadline: float) -> None:
            client = GatewayClient(target=f"127.0.0.1:{port}", tls_root=None,
                                   deadlines=Deadlines(evaluate=deadline))
            try:
                await client.transaction_known(signer, channel="gxchannel", tx_id=PROBE_TX_ID)
            finally:
                await client.close()

        _control(control, {"Evaluate": [5.0, 5.0]})
        wait_for(lambda: "latency now {'Evaluate'" in log.read_text(), 30, what="control applied")
        with pytest.raises(FabricError, match="DEADLINE_EXCEEDED"):
            asyncio.run(lookup(1.0))
        _control(control, {})
        wait_for(lambda: "latency now none" in log.read_text(), 30, what="control cleared")
        asyncio.run(lookup(20.0))  # answers (an unknown tx id is an answer)
        control.write_text("{not json")
        wait_for(lambda: "control file ignored" in log.read_text(), 30, what="bad control file reported")
        assert proc.poll() is None  # a bad file changes nothing and stops nothing
    finally:
        proc.terminate()
        proc.wait(15)
