"""A TCP proxy that adds delay, jitter, a blackhole or resets to a link, changed while it runs.

This machine's kernel has no netem, so the WAN scenario, the soak and the fault tests put this
proxy between gxsubmit and PostgreSQL or the gateway instead. It runs on a thread of its own with
its own event loop, so a test or the bench (threads, plain functions, or another event loop)
drives it with ordinary method calls:

* :meth:`FaultProxy.delay` — each direction holds every chunk ``rtt/2`` (plus up to ``jitter/2``,
  uniformly) before forwarding it; bytes stay in order, as on one TCP stream.
* :meth:`FaultProxy.blackhole` — nothing is forwarded, either way, on open or new connections (new
  ones are accepted by the kernel and then hang, as a SYN to a dead route does once the client's
  connect timeout is what fires). Held bytes are delivered when the blackhole lifts, as TCP would
  retransmit them after a partition heals. Note what it cannot show: the client's kernel still gets
  TCP acknowledgements from the proxy, so kernel mechanisms (TCP keepalive, ``tcp_user_timeout``)
  do not fire through it; only client-side deadlines see it. On a real network both do.
* :meth:`FaultProxy.reset` — every open connection is aborted with a RST on both sides;
  :meth:`FaultProxy.refuse` resets new connections at once, as a host whose port is closed.
* :meth:`FaultProxy.retarget` — later connections go to another upstream (a restarted server on a
  new port); open ones are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["FaultProxy", "ProxyStats", "upstream_of", "via"]

T = TypeVar("T")
_CHUNK = 65536
_QUEUE = 256  # chunks held per direction before the reader stops reading (back pressure)


@dataclass
class ProxyStats:
    accepted: int = 0
    open: int = 0
    reset: int = 0
    refused: int = 0
    upstream_errors: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with a RST (SO_LINGER 0), not a FIN: the peer sees 'connection reset'."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream`` (``host:port``) with the faults set at run time."""

    def __init__(self, upstream: str, *, name: str = "proxy", seed: int | None = None) -> None:
        self.name = name
        self._upstream = self._split(upstream)
        self._rtt = 0.0
        self._jitter = 0.0
        self._refuse = False
        self._rand = random.Random(seed)
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{name}", daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._flowing: asyncio.Event | None = None
        self._stopping = False
        self.port = 0

    @staticmethod
    def _split(address: str) -> tuple[str, int]:
        host, _, port = address.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- life cycle (any thread)

    def start(self) -> FaultProxy:
        self._thread.start()
        self.port = self._call(self._start)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop, timeout=10.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- faults (any thread)

    def delay(self, rtt_ms: float, jitter_ms: float = 0.0) -> None:
        """Added round trip (half each way) and its jitter, for every chunk from now on."""
        if rtt_ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0")
        self._rtt, self._jitter = rtt_ms / 1000.0, jitter_ms / 1000.0

    @property
    def rtt_ms(self) -> float:
        return self._rtt * 1000.0

    def blackhole(self, on: bool = True) -> None:
        """Stop (or resume) forwarding in both directions, on every connection."""
        self._call(self._set_flowing, not on)

    @property
    def blackholed(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    def reset(self) -> int:
        """Abort every open connection with a RST on both sides; returns how many."""
        return self._call(self._reset_all)

    def refuse(self, on: bool = True) -> None:
        """Reset new connections at once (the link is down but the host answers)."""
        self._refuse = on

    def retarget(self, upstream: str) -> None:
        """Send later connections to another upstream; open connections keep theirs."""
        self._upstream = self._split(upstream)

    def clear(self) -> None:
        """No delay, no blackhole, no refusal."""
        self.delay(0.0)
        self._refuse = False
        self.blackhole(False)

    def open_connections(self) -> int:
        return self.stats.open

    def upstream_ports(self) -> set[int]:
        """Local ports of the open upstream connections: the server's view of this proxy's clients
        (``pg_stat_activity.client_port``), so a test can tell its own backends from others'."""

        def ports() -> set[int]:
            out = set()
            for conn in self._conns:
                name = conn.upstream.get_extra_info("sockname") if conn.upstream is not None else None
                if name:
                    out.add(int(name[1]))
            return out

        return set(self._call(ports))

    # -- loop side

    def _call(self, fn: Callable[[], Any] | Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        async def run() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        fut: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return fut.result(timeout)

    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_CHUNK)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        """Abort every connection and let its tasks end by themselves: a handler task that ends
        cancelled makes asyncio's stream callback log an ERROR with a traceback (one per connection,
        in the output of the very test that failed and stopped the proxy)."""
        if self._server is not None:
            self._server.close()
        self._stopping = True
        self._reset_all()
        assert self._flowing is not None
        self._flowing.set()  # held bytes go to the aborted sockets, held connections see _stopping
        tasks = [*self._handlers, *(t for c in list(self._conns) for t in c.tasks)]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=2.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=3.0)

    def _set_flowing(self, on: bool) -> None:
        assert self._flowing is not None
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    def _reset_all(self) -> int:
        n = 0
        for conn in list(self._conns):
            _abort(conn.client)
            _abort(conn.upstream)
            n += 1
        self.stats.reset += n
        return n

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        if self._refuse:
            self.stats.refused += 1
            _abort(writer)
            return
        conn = _Conn(client=writer)
        self._conns.add(conn)
        self.stats.open += 1
        try:
            assert self._flowing is not None
            await self._flowing.wait()  # a blackhole swallows the connection attempt too
            if self._stopping:
                _abort(writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._upstream, limit=_CHUNK)
            except OSError:
                self.stats.upstream_errors += 1
                _abort(writer)
                return
            conn.upstream = up_writer
            for sock_writer in (writer, up_writer):
                sock = sock_writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            conn.tasks = [
                loop.create_task(self._direction(reader, up_writer, up=True)),
                loop.create_task(self._direction(up_reader, writer, up=False)),
            ]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            self._conns.discard(conn)
            self.stats.open -= 1
            for w in (writer, conn.upstream):
                if w is not None and not w.transport.is_closing():
                    w.transport.close()

    async def _direction(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, up: bool) -> None:
        """Read from ``src`` into a queue of (due time, bytes); a second task writes them when due."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE)
        writer = loop.create_task(self._deliver(queue, dst, up=up))
        last_due = 0.0
        try:
            while True:
                try:
                    data = await src.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                one_way = self._rtt / 2 + (self._rand.uniform(0.0, self._jitter / 2) if self._jitter else 0.0)
                due = max(last_due, loop.time() + one_way)  # jitter never reorders a stream
                last_due = due
                await queue.put((due, data))
                if not data:
                    break
            await writer
        finally:
            writer.cancel()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter, *,
                       up: bool) -> None:
        loop = asyncio.get_running_loop()
        assert self._flowing is not None
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if dst.can_write_eof():
                        dst.write_eof()
                return
            if up:
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)
            try:
                dst.write(data)
                await dst.drain()
            except (ConnectionError, OSError):
                return


def upstream_of(database_url: str) -> str:
    """``host:port`` of a libpq URL's (first) server, as the proxy's upstream."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(database_url)
    host = str(info.get("host") or "127.0.0.1").split(",")[0]
    port = str(info.get("port") or "5432").split(",")[0]
    return f"{host}:{port}"


def via(database_url: str, proxy: FaultProxy) -> str:
    """The same libpq URL with its server replaced by the proxy's address."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info = conninfo_to_dict(database_url)
    info.update(host="127.0.0.1", port=str(proxy.port))
    return make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})
