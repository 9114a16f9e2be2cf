"""One call per key at a time, its answer shared by every caller that asks while it runs.

Why: hundreds of jobs reach the same first-time lookup or insert together (the creator of a signing
identity, once per process). Each sending its own statement queued them on the worker's one
connection at a round trip apiece, which far from the database outlasted the statement deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Runs ``call`` for a key unless a call for it is under way, whose result (or exception) the
    caller then shares. A caller cancelled while waiting does not cancel the call; a failed call is
    made again by the next caller (nothing is cached once it ends: callers keep what they learnt)."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[T]] = {}

    async def run(self, key: K, call: Callable[[], Awaitable[T]]) -> T:
        fut = self._running.get(key)
        if fut is None:
            fut = self._running[key] = asyncio.ensure_future(call())
            fut.add_done_callback(lambda f: self._ended(key, f))
        return await asyncio.shield(fut)

    def running(self, key: K) -> bool:
        return key in self._running

    def _ended(self, key: K, fut: asyncio.Future[T]) -> None:
        if self._running.get(key) is fut:
            del self._running[key]
        if not fut.cancelled():
            fut.exception()  # seen, even when every caller was cancelled
