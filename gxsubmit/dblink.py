"""The worker's database link: one store connection that survives outages, plus batched writes.

Why a link and not the store directly: the original died (and restart-stormed) on every
PostgreSQL blip. Here a lost connection only pauses the work that needs the database: the
link reconnects with jittered backoff, callers that must not lose a write (status marks, outcomes)
wait for it and retry — safe because every completion is fenced by the lease token and the tx id
is fixed by the stored nonce — and callers that can skip a beat (claim, renew) just fail fast.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import psycopg

from gxsubmit.backoff import Backoff
from gxsubmit.outbox import OutboxStore

__all__ = ["Batcher", "DbLink", "DbUnavailable", "is_connection_error"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - item type of a batch

log = logging.getLogger("gxsubmit.dblink")


class DbUnavailable(Exception):
    """The database could not be reached before the caller's deadline (or shutdown)."""


def is_connection_error(exc: BaseException) -> bool:
    """True for failures that mean "this connection is gone", not "this statement is wrong"."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


class DbLink:
    """Holds the current :class:`OutboxStore`, swaps in a new one after a connection loss."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[OutboxStore]],
        *,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        on_reconnect: Callable[[], None] | None = None,
        deadline: float | None = None,
    ) -> None:
        self._connect = connect
        #: client-side deadline of one statement: a link that accepts bytes and never answers (a
        #: blackhole the kernel cannot see) counts as lost after it, not after TCP's ~15 minutes
        self._deadline = deadline
        #: loop time of the last statement that returned (for the worker's idle probe)
        self.last_ok = 0.0
        self._base = base_delay
        self._max = max_delay
        self._on_reconnect = on_reconnect
        self._store: OutboxStore | None = None
        #: one statement at a time, taken here rather than inside psycopg so that the deadline runs
        #: from a statement's own turn on the connection: a queue of statements on a far or busy link
        #: is not a dead link (each waiting statement would otherwise spend its deadline in the queue)
        self._turn = asyncio.Lock()
        self._ready = asyncio.Event()
        self._closed = False
        self._reconnecting: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.reconnects = 0

    @property
    def ok(self) -> bool:
        return self._ready.is_set()

    async def open(self, stop: asyncio.Event) -> bool:
        """Connect, retrying with backoff until connected (True) or ``stop`` is set (False)."""
        await self._reconnect_loop(stop=stop, first=True)
        return self.ok

    async def _reconnect_loop(self, *, stop: asyncio.Event | None = None, first: bool = False) -> None:
        # Jittered: replicas that lost the primary together must not reconnect in lock-step.
        pacer = Backoff(self._base, self._max)
        failures = 0
        while not self._closed and not (stop is not None and stop.is_set()):
            try:
                store = await self._connect()
            except Exception as exc:
                failures += 1
                self.last_error = f"database connect failed: {type(exc).__name__}: {exc}"
                if failures == 1 or failures % 10 == 0:
                    log.warning("Database unavailable, retrying", extra={"error": self.last_error,
                                                                         "failures": failures})
                await pacer.sleep(stop)
                continue
            self._store = store
            self.last_ok = asyncio.get_running_loop().time()
            self._ready.set()
            if not first:
                self.reconnects += 1
                log.info("Database reconnected", extra={"failures": failures})
                if self._on_reconnect is not None:
                    self._on_reconnect()
            return

    def broken(self, store: OutboxStore | None, exc: BaseException) -> None:
        """Report that ``store`` failed with a connection error; start reconnecting once."""
        if store is not self._store or not self._ready.is_set():
            return
        self._ready.clear()
        self.last_error = f"database connection lost: {type(exc).__name__}: {exc}"
        log.warning("Database connection lost; pausing claims and reconnecting",
                    extra={"error": self.last_error})
        old, self._store = self._store, None
        self._reconnecting = asyncio.get_running_loop().create_task(self._swap(old))

    async def _swap(self, old: OutboxStore | None) -> None:
        if old is not None:
            try:
                await asyncio.wait_for(old.close(), 2.0)
            except Exception:
                pass
        await self._reconnect_loop()

    async def wait_ready(self, timeout: float | None) -> bool:  # noqa: ASYNC109 - plain bounded wait
        if self._ready.is_set():
            return True
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def once(self, fn: Callable[[OutboxStore], Awaitable[T]]) -> T:
        """Run ``fn`` once; a connection error starts a reconnect and raises :class:`DbUnavailable`.

        The statement itself is shielded: a caller cancelled at shutdown must not interrupt a
        query half-way on the shared connection.
        """
        async with self._turn:
            store = self._store
            if store is None or not self._ready.is_set():
                raise DbUnavailable(self.last_error or "database not connected")
            return await self._run(store, fn)

    async def _run(self, store: OutboxStore, fn: Callable[[OutboxStore], Awaitable[T]]) -> T:
        statement = asyncio.ensure_future(fn(store))
        statement.add_done_callback(_retrieved)  # seen even when no caller is left to await it
        try:
            if self._deadline is None:
                result = await asyncio.shield(statement)
            else:
                result = await asyncio.wait_for(asyncio.shield(statement), self._deadline)
            self.last_ok = asyncio.get_running_loop().time()
            return result
        except TimeoutError:
            # The shielded statement may still be waiting on the socket: closing the connection
            # (broken -> _swap) ends it; the lease fences whatever it would have written.
            exc = DbUnavailable(f"no answer from the database within {self._deadline or 0:g} s")
            self.broken(store, exc)
            raise exc from None
        except Exception as exc:
            if is_connection_error(exc):
                self.broken(store, exc)
                raise DbUnavailable(str(exc)) from None
            raise

    async def call(
        self, fn: Callable[[OutboxStore], Awaitable[T]], *, timeout: float | None = None  # noqa: ASYNC109
    ) -> T:
        """Run ``fn``, waiting through outages and retrying after a reconnect (for idempotent,
        fenced writes). ``timeout`` bounds the total wait; None = until the database is back."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            if not await self.wait_ready(remaining):
                raise DbUnavailable(self.last_error or "database not connected")
            try:
                return await self.once(fn)
            except DbUnavailable:
                if deadline is not None and loop.time() >= deadline:
                    raise

    async def close(self) -> None:
        self._closed = True
        if self._reconnecting is not None and not self._reconnecting.done():
            self._reconnecting.cancel()
        store, self._store = self._store, None
        self._ready.clear()
        if store is not None:
            try:
                await asyncio.wait_for(store.close(), 5.0)
            except Exception:
                pass


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a statement's exception as seen: its caller may have given up (deadline, shutdown)."""
    if not task.cancelled():
        task.exception()


class Batcher(Generic[I]):
    """Coalesces single fenced writes (mark_submitted / mark_committed) into one statement.

    No added latency when idle: the first item flushes at once; items that arrive while a flush
    runs go out together in the next one. Under sustained load (the previous flush ended less than
    ``busy_s`` ago) a flush first waits ``linger_s`` so that more rows share the statement: every
    statement costs the database a plan and a WAL flush, whatever its size. ``put`` returns True if
    the row's lease still held.
    """

    def __init__(
        self,
        name: str,
        flush: Callable[[list[I]], Awaitable[set[uuid.UUID]]],
        key: Callable[[I], uuid.UUID],
        *,
        max_items: int = 500,
        linger_s: float = 0.0,
        busy_s: float = 0.05,
    ) -> None:
        self.name = name
        self._linger = linger_s
        self._busy = busy_s
        self._flush = flush
        self._key = key
        self._max = max_items
        self._items: list[tuple[I, asyncio.Future[bool]]] = []
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Cached: get_running_loop() costs a getpid() system call per item on CPython 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"batch-{self.name}")

    async def put(self, item: I) -> bool:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._items.append((item, fut))
        self._idle.clear()
        self._kick.set()
        # No shield needed (it cost a wrapper future per item): a caller cancelled at shutdown only
        # cancels its own future; the queued item stays in the batch and is still written.
        return await fut

    def pending(self) -> int:
        return len(self._items)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_flush = float("-inf")
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._linger and loop.time() - last_flush < self._busy:
                await asyncio.sleep(self._linger)  # busy: gather a bigger batch
            else:
                await asyncio.sleep(0)  # let items of the same loop tick join
            while self._items:
                chunk, self._items = self._items[: self._max], self._items[self._max :]
                await self._write(chunk)
            last_flush = loop.time()
            self._idle.set()

    async def _write(self, chunk: Sequence[tuple[I, asyncio.Future[bool]]]) -> None:
        try:
            held = await self._flush([item for item, _ in chunk])
        except Exception as exc:
            log.warning("Batched %s write failed; rows will be retried after their lease", self.name,
                        extra={"error": f"{type(exc).__name__}: {exc}", "rows": len(chunk)})
            held = set()
        for item, fut in chunk:
            if not fut.done():
                fut.set_result(self._key(item) in held)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - bounded shutdown wait
        """Wait until every queued item was written (or ``timeout``)."""
        if self._items:
            self._kick.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            pass

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for _, fut in self._items:
            if not fut.done():
                fut.set_result(False)
        self._items.clear()
