"""Circuit breaker state machine (fake clock, no sleeping)."""

from __future__ import annotations

import pytest

from gxsubmit.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(
    threshold: int = 3, cooldown: float = 2.0, max_cooldown: float = 8.0
) -> tuple[CircuitBreaker, Clock]:
    c = Clock()
    return CircuitBreaker(threshold=threshold, cooldown=cooldown, max_cooldown=max_cooldown, clock=c), c


def state(b: CircuitBreaker) -> BreakerState:
    """Read through a call: mypy would keep a property narrowed by an earlier assert."""
    return b.state


def test_opens_after_threshold_consecutive_failures() -> None:
    b, _ = make()
    assert not b.record_failure() and not b.record_failure()
    assert state(b) is BreakerState.CLOSED and b.allow()
    assert b.record_failure()
    assert state(b) is BreakerState.OPEN and not b.allow()
    assert b.remaining() == pytest.approx(2.0)


def test_success_resets_the_count() -> None:
    b, _ = make()
    b.record_failure()
    b.record_failure()
    b.record_success()
    assert not b.record_failure()
    assert state(b) is BreakerState.CLOSED


def test_half_open_lets_one_probe_and_success_closes() -> None:
    b, c = make()
    for _ in range(3):
        b.record_failure()
    c.t += 2.0
    assert state(b) is BreakerState.HALF_OPEN
    assert b.allow()
    assert not b.allow(), "only one probe at a time"
    b.record_success()
    assert state(b) is BreakerState.CLOSED and b.allow()


def test_failed_probe_reopens_with_doubled_cooldown_up_to_cap() -> None:
    b, c = make()
    for _ in range(3):
        b.record_failure()
    cooldowns = []
    for _ in range(4):
        c.t += b.remaining()
        assert b.allow()
        assert b.record_failure()
        cooldowns.append(b.remaining())
    assert cooldowns == [4.0, 8.0, 8.0, 8.0]


def test_failures_while_open_do_not_extend_it() -> None:
    b, c = make()
    for _ in range(3):
        b.record_failure()
    c.t += 1.0
    assert not b.record_failure()
    assert b.remaining() == pytest.approx(1.0)


def test_lost_probe_does_not_wedge_the_breaker() -> None:
    b, c = make()
    for _ in range(3):
        b.record_failure()
    c.t += 2.0
    assert b.allow()  # the probe is handed out and never reports back
    assert not b.allow()
    c.t += 2.1
    assert b.allow()


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(cooldown=5.0, max_cooldown=1.0)


def test_an_open_or_half_open_breaker_always_shows_the_gateway_down() -> None:
    """The idle worker probes whenever GatewayHealth.ok is False (claimloop): that covers a half-open
    breaker only because the breaker trips on nothing but the failures that clear ``ok``, and only an
    answer (which closes it) sets ``ok`` again."""
    from gxsubmit.decisions import INFRA_ERROR_CODES
    from gxsubmit.fabric import ErrorClass, FabricError
    from gxsubmit.gatewayhealth import GatewayHealth
    from gxsubmit.metrics import WorkerMetrics

    b, clock = make(threshold=2, cooldown=1.0)
    health = GatewayHealth(b, WorkerMetrics("unit-breaker"))
    down = FabricError(stage="endorse", error_class=ErrorClass.TRANSIENT,
                       error_code=sorted(INFRA_ERROR_CODES)[0], message="unreachable")
    refused = FabricError(stage="endorse", error_class=ErrorClass.PERMANENT, error_code="CHAINCODE_ERROR",
                          message="no")
    seen: list[tuple[BreakerState, bool]] = []
    for step in (down, down, "tick", down, "tick", refused, down):
        if step == "tick":
            clock.t += 5.0
        else:
            assert isinstance(step, FabricError)
            health.note(step)
        seen.append((state(b), health.ok))
    assert (BreakerState.HALF_OPEN, False) in seen and (BreakerState.OPEN, False) in seen
    assert all(not ok for st, ok in seen if st is not BreakerState.CLOSED), seen
    assert seen[-2] == (BreakerState.CLOSED, True)  # an answer, even a refusal, closes it and clears ok
