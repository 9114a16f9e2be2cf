"""The supervisor's HTTP endpoints: /metrics, /healthz, /readyz, /status.

The server runs on a thread of the supervisor and only *reads*: the supervisor loop
publishes an immutable snapshot, the handlers render it. Nothing here touches the
database, so a probe can never fail (or hang) because PostgreSQL is down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import orjson

from gxsubmit.log import get_logger

__all__ = ["HttpServer", "Probe"]

log = get_logger(__name__)


class Probe(Protocol):
    """What the handlers need from the supervisor; every method must be cheap and thread-safe."""

    def healthy(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, Mapping[str, str]]: ...

    def status(self) -> Mapping[str, Any]: ...


MetricsRenderer = Callable[[], tuple[bytes, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                body, ctype = self.server.render_metrics()
                self._send(HTTPStatus.OK, body, ctype)
            elif path == "/healthz":
                ok, reason = self.server.probe.healthy()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, (reason + "\n").encode())
            elif path == "/readyz":
                self._readyz()
            elif path == "/status":
                opts = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                body = orjson.dumps(self.server.probe.status(), option=opts)
                self._send(HTTPStatus.OK, body + b"\n", "application/json")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found: try /metrics /healthz /readyz /status\n")
        except Exception as exc:  # a broken handler must not take the thread (or the probe) down
            log.exception("HTTP handler failed", extra={"path": path})
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}\n".encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def _readyz(self) -> None:
        ok, reasons = self.server.probe.ready()
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        if "application/json" in (self.headers.get("Accept") or "") or "json" in self.path.split("?", 1)[-1]:
            body = orjson.dumps({"ready": ok, "identities": dict(reasons)}) + b"\n"
            self._send(status, body, "application/json")
            return
        lines = ["ready" if ok else "not ready"] + [f"{name}: {why}" for name, why in sorted(reasons.items())]
        self._send(status, ("\n".join(lines) + "\n").encode())

    def _send(self, status: HTTPStatus, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs would drown the JSON log in probe noise; errors are logged in do_GET."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], probe: Probe, render_metrics: MetricsRenderer) -> None:
        self.probe = probe
        self.render_metrics = render_metrics
        super().__init__(address, _Handler)


class HttpServer:
    """Serves the probe on ``host:port`` from a daemon thread (port 0 picks a free port)."""

    def __init__(self, host: str, port: int, probe: Probe, render_metrics: MetricsRenderer) -> None:
        self._server = _Server((host, port), probe, render_metrics)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5}, name="http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
