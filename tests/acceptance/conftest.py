"""Fixtures of the acceptance tests (real processes): see harness.py."""

from __future__ import annotations

from harness import emulator, procs

__all__ = ["emulator", "procs"]
