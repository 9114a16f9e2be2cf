"""SingleFlight: one call per key at a time, shared by the callers that ask meanwhile."""

from __future__ import annotations

import asyncio

import pytest

from gxsubmit.singleflight import SingleFlight


def test_callers_that_ask_together_share_one_call_and_a_later_one_calls_again() -> None:
    calls: list[str] = []

    async def main() -> None:
        flight: SingleFlight[str, int] = SingleFlight()
        gate = asyncio.Event()

        async def call() -> int:
            calls.append("x")
            await gate.wait()
            return len(calls)

        waiters = [asyncio.ensure_future(flight.run("k", call)) for _ in range(200)]
        await asyncio.sleep(0)
        assert flight.running("k")
        gate.set()
        assert await asyncio.gather(*waiters) == [1] * 200
        assert not flight.running("k")
        assert await flight.run("k", call) == 2  # ended: the next caller asks again

    asyncio.run(main())
    assert len(calls) == 2


def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    async def main() -> None:
        flight: SingleFlight[str, int] = SingleFlight()
        gate = asyncio.Event()

        async def failing() -> int:
            await gate.wait()
            raise ConnectionError("gone")

        waiters = [asyncio.ensure_future(flight.run("k", failing)) for _ in range(3)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)

        async def fine() -> int:
            return 7

        assert await flight.run("k", fine) == 7

    asyncio.run(main())


def test_a_cancelled_caller_does_not_cancel_the_call_the_others_wait_for() -> None:
    async def main() -> None:
        flight: SingleFlight[str, int] = SingleFlight()
        gate = asyncio.Event()

        async def call() -> int:
            await gate.wait()
            return 5

        first = asyncio.ensure_future(flight.run("k", call))
        second = asyncio.ensure_future(flight.run("k", call))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.set()
        assert await second == 5

    asyncio.run(main())
