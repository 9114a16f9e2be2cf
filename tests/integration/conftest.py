"""Fixtures shared by the emulator tests of this folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_emulator_support import RawGateway

from gxsubmit.emulator import Emulator


@pytest.fixture
def start_emulator(tmp_path: Path, wallet: Path) -> Iterator[Callable[..., tuple[Emulator, RawGateway]]]:
    """``start(**emulator_kwargs)`` -> (Emulator, RawGateway); 50 ms blocks and a per-test ledger unless
    given; everything started is stopped at the end of the test."""
    started: list[tuple[Emulator, RawGateway]] = []

    def start(**kw: Any) -> tuple[Emulator, RawGateway]:
        kw.setdefault("block_time", 0.05)
        kw.setdefault("ledger", tmp_path / "ledger.jsonl")
        emu = Emulator(wallet=wallet, **kw)
        gw = RawGateway(emu.start())
        started.append((emu, gw))
        return emu, gw

    yield start
    for emu, gw in started:
        gw.close()
        emu.stop()
