"""Retry delays: capped exponential backoff with jitter, and a reconnect pacer.

Jitter matters here: after an outage every worker retries at once, and synchronized retries make
the next outage. The original worker had no backoff at all (docs/design.md#the-worker-it-replaces).
"""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff", "backoff_ceiling", "compute_delay"]

_MAX_EXPONENT = 62  # 2**62 * base overflows nothing in float and is far past any cap


def backoff_ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The un-jittered delay for ``attempt`` (1-based): ``base * 2**(attempt-1)``, at most ``cap``."""
    if base_s < 0 or cap_s < 0:
        raise ValueError("base_s and cap_s must be >= 0")
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    return min(cap_s, base_s * float(2**exponent))


def compute_delay(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None, *, jitter: float = 1.0
) -> float:
    """Delay before retry number ``attempt``, drawn from ``[(1 - jitter) * c, c]`` with ``c`` the ceiling.

    ``jitter=1.0`` is "full jitter" (uniform in ``[0, c]``, the best spread); ``0.5`` keeps at least
    half the ceiling so delays also grow from below; ``0.0`` is plain exponential backoff.
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be within [0, 1]")
    ceiling = backoff_ceiling(attempt, base_s, cap_s)
    r = (rng or random).random()
    return ceiling * (1.0 - jitter * r)


class Backoff:
    """Successive sleep durations for reconnect loops, reset on success.

    Exponential with "equal jitter" (``jitter=0.5``): delay ``n`` lies in ``[c/2, c]`` for the ceiling
    ``c = min(cap, base * 2**(n-1))``. The pace surely grows during a long outage (pure decorrelated
    jitter can wander back to tiny delays), and workers that failed together still drift apart.
    """

    def __init__(
        self,
        base_s: float = 0.1,
        cap_s: float = 30.0,
        rng: random.Random | None = None,
        *,
        jitter: float = 0.5,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("need 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before the next try."""
        self.failures += 1
        return compute_delay(self.failures, self.base_s, self.cap_s, self._rng, jitter=self.jitter)

    def reset(self) -> None:
        """Call after a success: the next failure starts from ``base_s`` again."""
        self.failures = 0

    async def sleep(self, stop: asyncio.Event | None = None) -> float:
        """Sleep for :meth:`next_delay`, returning early if ``stop`` is set; returns the planned delay."""
        delay = self.next_delay()
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        return delay

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        return self.next_delay()
