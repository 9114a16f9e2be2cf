"""A worker's wake-ups for new rows: LISTEN/NOTIFY when notifications arrive, else a short poll.

Why probe: behind a transaction pooler (PgBouncer's usual mode) LISTEN runs on a server connection that
the pooler hands to other clients after the statement, so no notification ever reaches the worker and
it would find new rows only at its fallback poll (30 s by default). After every (re)connect, and every
few minutes after that (every minute while polling), the worker NOTIFYs a probe payload from its store
connection and waits for it on its LISTEN connection. If it does not arrive, the worker says so once
(log and /status) and polls every ``pooled_poll_interval`` until a later probe succeeds. A direct
LISTEN URL (``listen_url``) avoids the short poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gxsubmit.backoff import Backoff
from gxsubmit.dblink import DbUnavailable
from gxsubmit.outbox import OutboxListener

__all__ = ["Wakeups"]

log = logging.getLogger("gxsubmit.wakeups")

#: Longest wait for a probe NOTIFY; on a healthy connection it takes milliseconds.
PROBE_TIMEOUT_S = 3.0
#: Probe again this often: a listening connection that stopped receiving (a pooler put in between by a
#: reconnect) falls back to polling, and a polling worker finds out when notifications arrive again.
REPROBE_S = 300.0
#: While polling, probe again this often: a probe that only timed out on a loaded machine costs at most
#: this long of short polling and a stale warning.
REPROBE_POLLING_S = 60.0
#: Probe again this soon when the store connection could not send the probe.
RETRY_PROBE_S = 5.0


class Wakeups:
    """Owns the LISTEN connection; ``wake`` is set for each relevant NOTIFY (or a reconnect)."""

    def __init__(
        self,
        *,
        connect: Callable[[], Awaitable[OutboxListener]],
        send_probe: Callable[[str], Awaitable[Any]],
        wake: asyncio.Event,
        poll_interval: float,
        pooled_poll_interval: float,
    ) -> None:
        self._connect = connect
        self._send_probe = send_probe
        self._wake = wake
        self._poll = poll_interval
        self._short = min(poll_interval, pooled_poll_interval)
        self.notifier: OutboxListener | None = None
        #: "unknown" until the first probe, then "notify" or "poll"
        self.mode = "unknown"
        self.warning: str | None = None

    @property
    def poll_interval(self) -> float:
        """The claim loop's fallback poll: short while notifications are known not to arrive."""
        return self._short if self.mode == "poll" else self._poll

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        pacer = Backoff(0.5, 30.0)
        next_probe = 0.0
        while not stop.is_set():
            if self.notifier is None:
                try:
                    self.notifier = await self._connect()
                    pacer.reset()
                    # Rows inserted before this LISTEN took effect (the start's first claim runs in
                    # parallel; an outage dropped the old one) sent no NOTIFY we saw: claim once now,
                    # not at the fallback poll (the wan scenario showed whole windows lost to it).
                    self._wake.set()
                except Exception:
                    await pacer.sleep(stop)
                    continue
                next_probe = 0.0
            try:
                if loop.time() >= next_probe:
                    arrived = await self._probe(self.notifier)
                    next_probe = loop.time() + (REPROBE_S if arrived is not None else RETRY_PROBE_S)
                    if arrived is False:
                        await self._close()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), REPROBE_POLLING_S)
                        continue
                if await self.notifier.wait(1.0):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                await self._close()

    async def _probe(self, notifier: OutboxListener) -> bool | None:
        """False (and polling from now on) if the probe's NOTIFY did not arrive; None: cannot tell."""
        try:
            arrived, woken = await notifier.probe(self._send_probe, PROBE_TIMEOUT_S)
        except DbUnavailable:
            return None  # the store is down: keep listening, probe again soon
        if woken:
            self._wake.set()
        if arrived:
            if self.mode == "poll":
                log.info("Notifications arrive again; back to waiting for NOTIFY")
            self.mode, self.warning = "notify", None
            return True
        if self.mode != "poll":
            self.warning = (
                "NOTIFY does not reach the LISTEN connection (a transaction pooler?): polling every "
                f"{self._short:g}s; set GXSUBMIT_LISTEN_URL to a direct connection for prompt wake-ups")
            log.warning(self.warning)
        was, self.mode = self.mode, "poll"
        if was != "poll":
            self._wake.set()  # the claim loop may be in a fallback-poll wait (up to 36 s): claim now
        with contextlib.suppress(Exception):
            await notifier.unlisten()
        return False

    async def _close(self) -> None:
        notifier, self.notifier = self.notifier, None
        if notifier is not None:
            with contextlib.suppress(Exception):
                await notifier.close()

    async def close(self) -> None:
        await self._close()
