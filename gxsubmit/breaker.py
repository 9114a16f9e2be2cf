"""Per-identity circuit breaker for the gateway.

Why: during a gateway outage every claimed row would fail at once and come back a moment
later, burning attempts and CPU. After ``threshold`` consecutive infrastructure failures the
breaker opens: the worker stops claiming for a cool-down (doubling on every failed probe, up
to ``max_cooldown``), then lets exactly one probe through (half-open). A success closes it.
Pure logic with an injectable clock so it is unit-tested without sleeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure breaker. Not thread-safe (one event loop owns it)."""

    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown: float = 2.0,
        max_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold < 1 or cooldown <= 0 or max_cooldown < cooldown:
            raise ValueError("breaker: threshold >= 1 and 0 < cooldown <= max_cooldown required")
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._cooldown = cooldown
        self._probe_out = False
        self._probe_at = 0.0
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        if self._open_until is None:
            return BreakerState.CLOSED
        if self._clock() < self._open_until:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def is_closed(self) -> bool:
        return self._open_until is None

    def remaining(self) -> float:
        """Seconds until the next probe may run (0 when closed or half-open)."""
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def allow(self) -> bool:
        """May a normal call go ahead? Closed: yes. Half-open: one probe at a time."""
        st = self.state
        if st is BreakerState.CLOSED:
            return True
        if st is BreakerState.HALF_OPEN:
            now = self._clock()
            # A probe that never reported back (cancelled, handed back) must not wedge the breaker.
            if not self._probe_out or now - self._probe_at > self._cooldown:
                self._probe_out = True
                self._probe_at = now
                return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._cooldown = self.base_cooldown
        self._probe_out = False

    def record_failure(self) -> bool:
        """Count one infrastructure failure; True if this call opened (or re-opened) the breaker."""
        st = self.state
        if st is BreakerState.OPEN:
            return False  # calls already in flight when it opened: no extra penalty
        if st is BreakerState.HALF_OPEN:
            self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            self._trip()
            return True
        self._failures += 1
        if self._failures >= self.threshold:
            self._trip()
            return True
        return False

    def _trip(self) -> None:
        self._open_until = self._clock() + self._cooldown
        self._probe_out = False
        self.opened_count += 1
