"""The probe endpoint under abuse, with real sockets: 2,000 idle connections, slowloris, a /metrics flood.
/healthz keeps answering, the server's threads and connections stay bounded, idle clients are cut off,
and error text on /readyz and /status is short and sanitized."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from tooling import sockets_available
from waiting import wait_for

from gxsubmit.httpserver import HttpLimits, HttpServer

PW = "hunter2-very-secret"


class _Probe:
    """A supervisor's probe stand-in (pure data; the handlers only read it)."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {"org1-admin": "ok"}
        self.extra_status: dict[str, Any] = {}

    def healthy(self) -> tuple[bool, str]:
        return True, "ok"

    def ready(self) -> tuple[bool, Mapping[str, str]]:
        return all(v == "ok" for v in self.reasons.values()), dict(self.reasons)

    def status(self) -> Mapping[str, Any]:
        return {"workers": {"org1-admin": {"state": "running", **self.extra_status}}}


class _Renderer:
    def __init__(self, cpu_s: float = 0.0) -> None:
        self.calls = 0
        self.cpu_s = cpu_s

    def __call__(self) -> tuple[bytes, str]:
        self.calls += 1
        end = time.thread_time() + self.cpu_s
        while time.thread_time() < end:
            pass
        return b"# metrics\ngx_up 1\n", "text/plain; version=0.0.4"


@contextlib.contextmanager
def _server(probe: _Probe, render: _Renderer, **limits: Any) -> Iterator[HttpServer]:
    srv = HttpServer("127.0.0.1", 0, probe, render, limits=HttpLimits(**limits))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection (as a kubelet probe does); the socket timeout is the probe's."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body



def _server_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("http"))


@pytest.mark.slow  # about 10 s: kept out of the quick subset
def test_two_thousand_idle_connections_never_stop_the_probe() -> None:
    n = sockets_available(2000, spare=200, least=1000)
    probe, render = _Probe(), _Renderer()
    with _server(probe, render, max_connections=64, header_timeout=30.0) as srv:
        threads_before = _server_threads()
        idle: list[socket.socket] = []
        try:
            for i in range(n):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                if i % 2:
                    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
                idle.append(s)
            for _ in range(20):
                assert _get(srv.port, "/healthz") == (200, b"ok\n")
            # bounded: the server runs a fixed number of threads whatever the number of clients ...
            assert _server_threads() <= max(threads_before, 2), [t.name for t in threading.enumerate()]
            # ... and holds at most max_connections of them: the oldest idle ones were closed
            closed = 0
            for s in idle[:200]:
                s.settimeout(10)
                try:
                    closed += s.recv(1) == b""
                except ConnectionResetError:  # closed with a reset: the server aborts evicted ones
                    closed += 1
            assert closed == 200
        finally:
            for s in idle:
                s.close()


def test_slow_and_idle_clients_are_cut_off() -> None:
    probe, render = _Probe(), _Renderer()
    with _server(probe, render, header_timeout=1.0) as srv:
        idle = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        try:
            # slowloris: a byte at a time, never finishing the head
            stop = threading.Event()

            def drip() -> None:
                with contextlib.suppress(OSError):
                    for b in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 10_000:
                        if stop.wait(0.2):
                            return
                        slow.send(bytes([b]))

            t = threading.Thread(target=drip, daemon=True)
            t.start()
            assert idle.recv(1) == b""  # closed by the server (the socket timeout is 30 s)
            wait_for(lambda: not t.is_alive(), 30, what="the slow client cut off")
            stop.set()
            assert _get(srv.port, "/healthz") == (200, b"ok\n")
        finally:
            idle.close()
            slow.close()


def test_a_metrics_flood_does_not_starve_the_probe() -> None:
    probe, render = _Probe(), _Renderer(cpu_s=0.02)
    with _server(probe, render) as srv:
        stop = threading.Event()
        served = [0]

        def flood() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    code, _ = _get(srv.port, "/metrics", timeout=30)
                    if code == 200:
                        served[0] += 1

        floods = [threading.Thread(target=flood, daemon=True) for _ in range(8)]
        for t in floods:
            t.start()
        try:
            wait_for(lambda: served[0] >= 50, 60, what="the flood under way")
            for _ in range(20):
                assert _get(srv.port, "/healthz", timeout=10) == (200, b"ok\n")
        finally:
            stop.set()
            for t in floods:
                t.join(30)
        # renders are shared by the requests that arrive while one is under way (and reused briefly)
        assert render.calls < served[0]


def test_error_text_is_short_and_sanitized() -> None:
    probe, render = _Probe(), _Renderer()
    long_error = f"connection to postgresql://gx:{PW}@db:5432/gx failed\n\x1b[31mred" + "x" * 20_000
    probe.reasons = {"org1-admin": "database unavailable: " + long_error, "org1-ops\nfake": "ok"}
    probe.extra_status = {"last_error": long_error, "nested": [{"error": long_error}]}
    with _server(probe, render) as srv:
        for path in ("/readyz", "/readyz?json", "/status"):
            code, body = _get(srv.port, path)
            text = body.decode()
            assert PW not in text, path
            assert "\x1b" not in text, path
            assert len(body) < 4000, (path, len(body))
        code, body = _get(srv.port, "/readyz")
        assert code == 503
        lines = body.decode().splitlines()
        assert lines[0] == "not ready" and len(lines) == 3  # one line per identity, no injected line
        assert all(len(line) <= 320 for line in lines)


def test_methods_and_bodies() -> None:
    probe, render = _Probe(), _Renderer()
    with _server(probe, render) as srv, socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        assert s.recv(100).split()[1] == b"405"
        assert _get(srv.port, "/nope")[0] == 404
        code, body = _get(srv.port, "/metrics")
        assert code == 200 and b"gx_up 1" in body
