"""Fault injection settings of the emulator, mutable while it runs.

Probabilities are fractions in [0, 1]; a test flips them on the live object (`Emulator.faults`)
to provoke the failure modes a real gateway, orderer or committer produces.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

__all__ = ["RPC_NAMES", "Faults", "parse_latency"]

RPC_NAMES = ("Evaluate", "Endorse", "Submit", "CommitStatus", "ChaincodeEvents", "DeliverFiltered")


@dataclass
class Faults:
    """What to break, and how often.

    ``submit_lost_ack``: the transaction IS ordered, but the client receives UNAVAILABLE (the
    exactly-once test case). ``submit_timeout``/``endorse_timeout``: the call hangs past the
    client's deadline (the transaction is not ordered). ``outage_until`` is a ``time.monotonic``
    deadline during which every RPC answers UNAVAILABLE. ``orderer_max_bytes`` is the channel's
    ``BatchSize.AbsoluteMaxBytes``: a larger envelope is refused at Submit (REQUEST_ENTITY_TOO_LARGE),
    as a real orderer does; 0 = no limit. ``endorse_mismatch_in_flight``: a re-endorsement
    of a tx id the orderer holds but has not yet cut into a block answers "ProposalResponsePayloads do
    not match", as a gateway does whose peers are at different heights while the first copy is ordered.
    """

    latency_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    endorse_unavailable: float = 0.0
    endorse_timeout: float = 0.0
    submit_unavailable: float = 0.0
    submit_timeout: float = 0.0
    submit_lost_ack: float = 0.0
    commit_status_unavailable: float = 0.0
    mvcc: float = 0.0
    policy_failure: float = 0.0
    endorse_mismatch_in_flight: bool = False
    #: chance that an answer (Endorse, CommitStatus, a block on DeliverFiltered) is a hostile one
    #: (garbled, truncated, oversized or contradictory: see gxsubmit.emulator.hostile)
    hostile: float = 0.0
    outage_until: float = 0.0
    orderer_max_bytes: int = 0

    def outage(self, duration_s: float) -> None:
        """Start a gateway outage of ``duration_s`` seconds from now."""
        self.outage_until = time.monotonic() + duration_s

    def in_outage(self) -> bool:
        return self.outage_until > 0.0 and time.monotonic() < self.outage_until

    def latency_for(self, rpc: str, rng: random.Random) -> float:
        span = self.latency_s.get(rpc) or self.latency_s.get("*")
        if not span:
            return 0.0
        lo, hi = span
        return lo if hi <= lo else rng.uniform(lo, hi)

    def clear(self) -> None:
        """Back to a healthy gateway."""
        fresh = Faults()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))


def parse_latency(spec: str) -> tuple[str, tuple[float, float]]:
    """``RPC=MIN:MAX`` (or ``RPC=S``) in seconds; RPC is a method name or ``*``."""
    rpc, sep, rng = spec.partition("=")
    if not sep or (rpc != "*" and rpc not in RPC_NAMES):
        raise ValueError(f"--latency {spec!r}: expected RPC=MIN:MAX with RPC one of * {' '.join(RPC_NAMES)}")
    lo_s, _, hi_s = rng.partition(":")
    try:
        lo = float(lo_s)
        hi = float(hi_s) if hi_s else lo
    except ValueError:
        raise ValueError(f"--latency {spec!r}: MIN and MAX must be numbers of seconds") from None
    if lo < 0 or hi < lo:
        raise ValueError(f"--latency {spec!r}: need 0 <= MIN <= MAX")
    return rpc, (lo, hi)
