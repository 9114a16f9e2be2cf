"""Commit outcomes from one filtered-block stream per channel instead of one CommitStatus call per tx.

Why: a unary gRPC call costs this process about as much CPU as everything else it does for a command,
and CommitStatus was one of three per command. A peer's DeliverFiltered stream carries the validation
code of every transaction of every block, so one stream answers all the waits of a worker.

Rules that keep it exactly as safe as CommitStatus:

- A wait is registered before Submit (:meth:`CommitWatcher.expect`), so the block holding the tx can
  only arrive after it; the stream is followed block by block without gaps (a reconnect resumes at the
  block after the last one seen).
- Only a live stream takes waits: before the first block arrived, or while reconnecting, ``expect``
  returns None and the caller asks CommitStatus as before. When the stream breaks, every pending wait
  is answered None at once, which sends it to CommitStatus too.
- DUPLICATE_TXID on the stream is the code of a later copy; the caller must ask CommitStatus, which
  reports the first copy. Such a wait is answered None as well.
- The stream is believed only while it is consistent: a block number past the next one expected (blocks
  skipped) breaks the stream (reconnect at the first block not seen; every wait to CommitStatus); a tx id
  listed twice in a block with two codes that are not "first copy, then DUPLICATE_TXID", or with a code
  this release does not know, is answered None (CommitStatus decides). A hostile or broken peer can thus
  delay an answer, never make one up from a contradiction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gxsubmit.backoff import Backoff
from gxsubmit.fabric.client import CommitResult, GatewayClient
from gxsubmit.fabric.codes import DUPLICATE_TXID, code_name
from gxsubmit.fabric.errors import ErrorClass, FabricError
from gxsubmit.fabric.identity import SigningIdentity

__all__ = ["CommitWatcher", "tls_cert_hash"]

log = logging.getLogger("gxsubmit.fabric.commits")


def tls_cert_hash(pem: bytes) -> bytes:
    """SHA-256 of the client TLS certificate (DER): binds a seek request to the mutual-TLS session."""
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).digest()


class CommitWatcher:
    """Follows one channel's filtered blocks on the gateway peer and answers waits for tx ids."""

    def __init__(
        self,
        client: GatewayClient,
        signer: Callable[[], SigningIdentity],
        channel: str,
        *,
        tls_cert_hash: bytes | None = None,
        on_state: Callable[[bool], None] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self._client = client
        self._signer = signer
        self.channel = channel
        self._tls_cert_hash = tls_cert_hash
        self._on_state = on_state
        self._waiting: dict[str, asyncio.Future[CommitResult | None]] = {}
        #: (deadline, tx id, future) in registration order: one sweep per second answers the overdue
        #: ones None (cheaper than a timer per transaction)
        self._deadlines: deque[tuple[float, str, asyncio.Future[CommitResult | None]]] = deque()
        self.timeout_s = timeout_s
        self.live = False
        #: Why the stream last ended (cleared by the next block): the gateway's own words, for /readyz.
        self.last_error: str | None = None
        #: The next block this watcher needs; None until the first block arrived.
        self.next_block: int | None = None
        self.blocks_seen = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def expect(self, tx_id: str) -> asyncio.Future[CommitResult | None] | None:
        """A future for ``tx_id``'s commit, or None if the stream cannot promise to see it (not live).

        It is answered None (ask CommitStatus) if no block brings the tx within ``timeout_s``."""
        if not self.live:
            return None
        fut = self._waiting.get(tx_id)
        if fut is None or fut.done():
            fut = self._waiting[tx_id] = asyncio.get_running_loop().create_future()
            self._deadlines.append((time.monotonic() + self.timeout_s, tx_id, fut))
        return fut

    def forget(self, tx_id: str) -> None:
        """Drop a wait whose transaction was never handed to the orderer after all."""
        fut = self._waiting.pop(tx_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the stream open until ``stop``; reconnect with backoff, resuming after the last block."""
        pacer = Backoff(0.2, 10.0)
        sweeper = asyncio.get_running_loop().create_task(
            self._sweep(stop), name=f"commit-sweep-{self.channel}"
        )
        try:
            await self._follow(stop, pacer)
        finally:
            sweeper.cancel()
            self._down()

    async def _sweep(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
            self.expire(time.monotonic())

    def expire(self, now: float) -> None:
        """Answer None to the waits whose deadline passed (their tx ids go to CommitStatus)."""
        deadlines, waiting = self._deadlines, self._waiting
        while deadlines and (deadlines[0][0] <= now or deadlines[0][2].done()):
            _, tx_id, fut = deadlines.popleft()
            if not fut.done():
                fut.set_result(None)
                if waiting.get(tx_id) is fut:
                    del waiting[tx_id]

    async def _follow(self, stop: asyncio.Event, pacer: Backoff) -> None:
        while not stop.is_set():
            try:
                async for block in self._client.filtered_blocks(
                    self._signer(),
                    channel=self.channel,
                    start_block=self.next_block,
                    tls_cert_hash=self._tls_cert_hash,
                ):
                    if self.next_block is not None and block.number != self.next_block:
                        if block.number < self.next_block:
                            continue  # a replayed block this watcher already handled
                        raise FabricError(
                            stage="deliver", error_class=ErrorClass.TRANSIENT, error_code="DELIVER_GAP",
                            message=f"block stream on {self.channel} jumped from block {self.next_block} "
                                    f"to {block.number}",
                        )
                    self._on_block(block.number, block.transactions)
                    if pacer.failures:
                        pacer.reset()
            except Exception as err:  # the watcher must outlive any one stream
                # A FabricError is the stream's own end; anything else is a bug, but the worker keeps
                # running on CommitStatus meanwhile rather than leaving waits nobody will answer.
                self._down()
                self.last_error = str(err) if isinstance(err, FabricError) else f"{type(err).__name__}: {err}"
                delay = pacer.next_delay()
                if pacer.failures == 1 or pacer.failures % 10 == 0:
                    log.warning(
                        "Commit stream on %s lost; using CommitStatus until it is back",
                        self.channel,
                        extra={
                            "error": self.last_error,
                            "retry_in_s": round(delay, 3),
                            "next_block": self.next_block,
                        },
                    )
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        self._down()

    def _on_block(self, number: int, transactions: tuple[tuple[str, int], ...]) -> None:
        if not self.live:
            self.live = True
            self.last_error = None
            log.info("Commit stream on %s following blocks from %d", self.channel, number)
            if self._on_state is not None:
                self._on_state(True)
        self.next_block = number + 1
        self.blocks_seen += 1
        waiting = self._waiting
        if not waiting:
            return
        answers: dict[str, CommitResult | None] = {}
        for tx_id, code in transactions:
            if tx_id not in waiting:
                continue
            if tx_id in answers:
                if code != DUPLICATE_TXID:
                    answers[tx_id] = None  # two outcomes for one tx id: CommitStatus decides
                continue
            name = code_name(code)
            if code == DUPLICATE_TXID or name.startswith("UNKNOWN_"):
                # a later copy (only CommitStatus knows the first copy's code), or a code we cannot judge
                answers[tx_id] = None
            else:
                answers[tx_id] = CommitResult(tx_id=tx_id, block_number=number, code=code, code_name=name)
        for tx_id, result in answers.items():
            fut = waiting.pop(tx_id)
            if not fut.done():
                fut.set_result(result)

    def _down(self) -> None:
        """Not live any more: every pending wait goes to CommitStatus now."""
        if self.live and self._on_state is not None:
            self._on_state(False)
        self.live = False
        waiting, self._waiting = self._waiting, {}
        self._deadlines.clear()
        for fut in waiting.values():
            if not fut.done():
                fut.set_result(None)
