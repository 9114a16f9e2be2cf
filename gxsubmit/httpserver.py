"""The supervisor's HTTP endpoints: /metrics, /healthz, /readyz, /status.

The server runs on a thread of the supervisor and only *reads*: the supervisor loop
publishes an immutable snapshot, the handlers render it. Nothing here touches the
database, so a probe can never fail (or hang) because PostgreSQL is down.

Bounded whatever the clients do: one event-loop thread serves every connection and one more
thread renders /metrics, so idle or slow clients cost a file descriptor each, never a thread;
at most ``max_connections`` are held (a new client closes the oldest one still waiting for its
request); a request head must arrive within ``header_timeout``; a response must be taken within
``write_timeout``. /metrics renders are shared by the requests that arrive during one and reused
for ``metrics_reuse_s``, so a flood of scrapes costs at most one render at a time. Text that came
from elsewhere (a worker's last error, a driver's message) is redacted, stripped of control
characters and clipped before it is served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import orjson

from gxsubmit.log import get_logger
from gxsubmit.secrets import redact

__all__ = ["HttpLimits", "HttpServer", "Probe", "clean_text"]

log = get_logger(__name__)


class Probe(Protocol):
    """What the handlers need from the supervisor; every method must be cheap and thread-safe."""

    def healthy(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, Mapping[str, str]]: ...

    def status(self) -> Mapping[str, Any]: ...


MetricsRenderer = Callable[[], tuple[bytes, str]]


@dataclass(frozen=True)
class HttpLimits:
    """Bounds of the probe server (defaults fit a kubelet and one or two Prometheus servers)."""

    max_connections: int = 128
    header_timeout: float = 10.0
    write_timeout: float = 10.0
    max_header_bytes: int = 8192
    metrics_reuse_s: float = 1.0
    #: longest served string taken from elsewhere (an error text) in /readyz and /status
    max_text: int = 300


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def clean_text(text: str, limit: int = 300) -> str:
    """One short line: passwords redacted, control characters (newlines, escapes) made spaces, clipped."""
    out = _CONTROL.sub(" ", redact(text)).strip()
    return out if len(out) <= limit else out[: limit - 3] + "..."


def _clean_tree(value: Any, limit: int, depth: int = 0) -> Any:
    if isinstance(value, str):
        return clean_text(value, limit)
    if depth > 20:
        return "..."
    if isinstance(value, Mapping):
        return {(clean_text(k, 100) if isinstance(k, str) else k): _clean_tree(v, limit, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_tree(v, limit, depth + 1) for v in value]
    return value


class _Request:
    __slots__ = ("accept", "close", "has_body", "method", "path", "query")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str]) -> None:
        self.method = method
        # no endpoint takes a body; not reading one means not keeping the connection
        self.has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
        path, _, self.query = target.partition("?")
        self.path = path.rstrip("/") or "/"
        self.accept = headers.get("accept", "")
        conn = headers.get("connection", "").lower()
        self.close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")


class _BadRequest(Exception):
    pass


def _parse_head(head: bytes) -> _Request:
    try:
        text = head.decode("latin-1")
        first, *lines = text.split("\r\n")
        method, target, version = first.split(" ")
    except ValueError:
        raise _BadRequest from None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        raise _BadRequest
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return _Request(method, target, version, headers)


class _Connections:
    """The open connections in arrival order, and which of them are only waiting for a request."""

    def __init__(self) -> None:
        self.waiting: dict[asyncio.StreamWriter, None] = {}  # insertion-ordered set
        self.all: set[asyncio.StreamWriter] = set()

    def evict_oldest_waiting(self) -> bool:
        for writer in self.waiting:
            del self.waiting[writer]
            writer.transport.abort()
            return True
        return False


class HttpServer:
    """Serves the probe on ``host:port`` from a daemon thread (port 0 picks a free port).

    The socket is bound here, so a taken port raises OSError at construction, before ``start``."""

    def __init__(
        self,
        host: str,
        port: int,
        probe: Probe,
        render_metrics: MetricsRenderer,
        *,
        limits: HttpLimits | None = None,
    ) -> None:
        self.probe = probe
        self.render_metrics = render_metrics
        self.limits = limits or HttpLimits()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(1024)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self._conns = _Connections()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._render_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="http-metrics")
        self._render_inflight: asyncio.Future[tuple[bytes, str]] | None = None
        self._render_last: tuple[float, tuple[bytes, str]] | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
            self._thread.join(timeout=5)
        self._render_pool.shutdown(wait=False, cancel_futures=True)
        self._sock.close()

    # -- the loop thread

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._serve, sock=self._sock, limit=self.limits.max_header_bytes
        )
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for writer in list(self._conns.all):
                writer.transport.abort()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns = self._conns
        if len(conns.all) >= self.limits.max_connections and not conns.evict_oldest_waiting():
            writer.transport.abort()  # every held connection is mid-response: refuse the newcomer
            return
        conns.all.add(writer)
        try:
            while True:
                conns.waiting[writer] = None
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.limits.header_timeout)
                except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return  # idle, too slow, too long or gone: close without a word
                conns.waiting.pop(writer, None)
                try:
                    req = _parse_head(head[:-4])
                except _BadRequest:
                    await self._send(writer, "GET", HTTPStatus.BAD_REQUEST, b"bad request\n", close=True)
                    return
                if req.method not in ("GET", "HEAD"):
                    await self._send(writer, req.method, HTTPStatus.METHOD_NOT_ALLOWED,
                                     b"only GET and HEAD\n", close=True)
                    return
                if req.has_body:
                    await self._send(writer, "GET", HTTPStatus.BAD_REQUEST, b"no body expected\n", close=True)
                    return
                status, body, ctype = await self._answer(req)
                if not await self._send(writer, req.method, status, body, ctype, close=req.close):
                    return
                if req.close:
                    return
        finally:
            conns.waiting.pop(writer, None)
            conns.all.discard(writer)
            writer.transport.abort()

    async def _answer(self, req: _Request) -> tuple[HTTPStatus, bytes, str]:
        text = "text/plain; charset=utf-8"
        try:
            if req.path == "/metrics":
                body, ctype = await self._metrics()
                return HTTPStatus.OK, body, ctype
            if req.path == "/healthz":
                ok, reason = self.probe.healthy()
                return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                        (clean_text(reason, self.limits.max_text) + "\n").encode(), text)
            if req.path == "/readyz":
                return self._readyz(req)
            if req.path == "/status":
                opts = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                body = orjson.dumps(_clean_tree(self.probe.status(), self.limits.max_text), option=opts)
                return HTTPStatus.OK, body + b"\n", "application/json"
            return HTTPStatus.NOT_FOUND, b"not found: try /metrics /healthz /readyz /status\n", text
        except Exception as exc:  # a broken handler must not take the server (or the probe) down
            log.exception("HTTP handler failed", extra={"path": req.path})
            return HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}\n".encode(), text

    def _readyz(self, req: _Request) -> tuple[HTTPStatus, bytes, str]:
        ok, reasons = self.probe.ready()
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        limit = self.limits.max_text
        clean = {clean_text(name, 100): clean_text(why, limit) for name, why in reasons.items()}
        if "application/json" in req.accept or "json" in req.query:
            return status, orjson.dumps({"ready": ok, "identities": clean}) + b"\n", "application/json"
        lines = ["ready" if ok else "not ready"] + [f"{name}: {why}" for name, why in sorted(clean.items())]
        return status, ("\n".join(lines) + "\n").encode(), "text/plain; charset=utf-8"

    async def _metrics(self) -> tuple[bytes, str]:
        """One render at a time, shared by every request that arrives meanwhile, reused briefly."""
        last = self._render_last
        if last is not None and time.monotonic() - last[0] < self.limits.metrics_reuse_s:
            return last[1]
        fut = self._render_inflight
        if fut is None:
            fut = asyncio.get_running_loop().run_in_executor(self._render_pool, self.render_metrics)
            self._render_inflight = fut
            fut.add_done_callback(self._rendered)
        return await asyncio.shield(fut)

    def _rendered(self, fut: asyncio.Future[tuple[bytes, str]]) -> None:
        self._render_inflight = None
        if not fut.cancelled() and fut.exception() is None:
            self._render_last = (time.monotonic(), fut.result())

    async def _send(self, writer: asyncio.StreamWriter, method: str, status: HTTPStatus, body: bytes,
                    ctype: str = "text/plain; charset=utf-8", *, close: bool = False) -> bool:
        head = (
            f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode()
        writer.write(head if method == "HEAD" else head + body)
        try:
            await asyncio.wait_for(writer.drain(), self.limits.write_timeout)
        except (TimeoutError, OSError):
            return False  # a client that does not read its answer loses the connection
        return True
