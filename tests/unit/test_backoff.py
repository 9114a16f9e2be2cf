"""Backoff: delays are bounded by a growing, capped ceiling, and jittered."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gxsubmit.backoff import Backoff, backoff_ceiling, compute_delay

bases = st.floats(min_value=0.001, max_value=10.0)
caps = st.floats(min_value=0.01, max_value=3600.0)
attempts = st.integers(min_value=1, max_value=10_000)
seeds = st.integers(min_value=0, max_value=2**32)


@given(attempts, bases, caps)
def test_ceiling_grows_until_the_cap(attempt: int, base: float, cap: float) -> None:
    c1, c2 = backoff_ceiling(attempt, base, cap), backoff_ceiling(attempt + 1, base, cap)
    assert c1 <= c2 <= cap
    if c1 < cap:  # below the cap the ceiling doubles
        assert c2 == pytest.approx(min(cap, 2 * c1))


@given(attempts, bases, caps, seeds, st.floats(min_value=0.0, max_value=1.0))
def test_delay_within_jitter_band(attempt: int, base: float, cap: float, seed: int, jitter: float) -> None:
    ceiling = backoff_ceiling(attempt, base, cap)
    d = compute_delay(attempt, base, cap, random.Random(seed), jitter=jitter)
    assert (1.0 - jitter) * ceiling - 1e-9 <= d <= ceiling <= cap


def test_huge_attempt_numbers_hit_the_cap_without_overflow() -> None:
    assert backoff_ceiling(10**9, 0.5, 60.0) == 60.0
    assert 0.0 <= compute_delay(10**9, 0.5, 60.0, random.Random(1)) <= 60.0


@given(seeds)
def test_delays_are_jittered(seed: int) -> None:
    rng = random.Random(seed)
    samples = {compute_delay(5, 1.0, 100.0, rng) for _ in range(20)}
    assert len(samples) > 1


@given(seeds)
def test_equal_jitter_delays_grow_from_below(seed: int) -> None:
    rng = random.Random(seed)
    # With jitter 0.5 every delay of attempt n+2 exceeds every delay of attempt n (below the cap).
    for n in range(1, 8):
        low = compute_delay(n, 0.1, 1000.0, rng, jitter=0.5)
        assert low < compute_delay(n + 2, 0.1, 1000.0, rng, jitter=0.5)


def test_no_jitter_is_plain_exponential() -> None:
    assert [compute_delay(n, 0.5, 5.0, jitter=0.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError):
        compute_delay(1, 1.0, 1.0, jitter=1.5)
    with pytest.raises(ValueError):
        Backoff(base_s=0.0)


@given(seeds, st.integers(min_value=1, max_value=200))
def test_reconnect_backoff_capped_and_reset(seed: int, n: int) -> None:
    b = Backoff(base_s=0.1, cap_s=5.0, rng=random.Random(seed))
    delays = [b.next_delay() for _ in range(n)]
    assert all(0.05 <= d <= 5.0 for d in delays)
    assert b.failures == n
    b.reset()
    assert b.failures == 0
    assert b.next_delay() <= 0.1  # back to the first step after a reset


def test_reconnect_backoff_grows_during_an_outage() -> None:
    b = Backoff(base_s=0.1, cap_s=30.0, rng=random.Random(7))
    delays = [next(b) for _ in range(40)]
    assert max(delays[:3]) <= 0.4
    assert min(delays[-10:]) >= 15.0  # deep into the outage every delay is at least half the cap


async def test_sleep_returns_early_when_stopped() -> None:
    b = Backoff(base_s=100.0, cap_s=300.0)
    stop = asyncio.Event()
    stop.set()
    planned = await asyncio.wait_for(b.sleep(stop), 5.0)  # would fail if it really slept >= 100 s
    assert planned >= 50.0
