"""Fabric Gateway emulator: a strict stand-in for a Fabric peer gateway, orderer and committer."""

from __future__ import annotations

from gxsubmit.emulator.faults import Faults
from gxsubmit.emulator.server import Emulator, EmulatorError

__all__ = ["Emulator", "EmulatorError", "Faults"]
