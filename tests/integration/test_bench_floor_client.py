"""bench/floor_client.py, the saturation scenario's CPU floor, against a real emulator over a socket.

The floor is only worth reporting if it does the work a worker does: every command it counts must be a
VALID transaction on the emulator's ledger, signed by the identity it was started as.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from audit import read_ledger
from test_emulator_support import RawGateway
from waiting import wait_for

from gxsubmit.emulator import Emulator

FLOOR = Path(__file__).resolve().parents[2] / "bench" / "floor_client.py"


def test_floor_client_counts_only_committed_valid_transactions(
    start_emulator: Callable[..., tuple[Emulator, RawGateway]], wallet: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    emu, _gw = start_emulator(ledger=ledger)
    proc = subprocess.Popen(
        [sys.executable, str(FLOOR), "--target", f"127.0.0.1:{emu.port}", "--wallet", str(wallet),
         "--identity", "org1-partner-api", "--in-flight", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)  # window start
        wait_for(lambda: len(read_ledger(ledger)) >= 50, timeout=60, what="50 commits")
        proc.send_signal(signal.SIGUSR1)  # window end
        wait_for(lambda: len(read_ledger(ledger)) >= 60, timeout=60, what="commits after the second mark")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    first, second = result["marks"]
    assert 0 <= first < second  # the clients kept committing between the two marks
    assert result["failed"] == 0
    # Nothing counted that the ledger does not hold as VALID (commits after the last mark are not counted).
    lines = read_ledger(ledger)
    assert {(t["validation_code"], t["function"], t["role"]) for t in lines} == {
        ("VALID", "IdentityContract:CreateUser", "gx_partner_api")
    }
    assert second <= len(lines)
