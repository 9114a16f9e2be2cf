"""The bench's TCP fault proxy over real sockets: pass-through, delay, blackhole, reset, refuse, retarget,
and a real PostgreSQL session through it."""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from waiting import wait_for

from bench.faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: str) -> Iterator[FaultProxy]:
    with FaultProxy(echo, name="test", seed=1) as p:
        yield p


def _connect(p: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", p.port), timeout=10)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_passes_bytes_through_in_order(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one chunk and than the queue's back pressure
    with _connect(proxy) as s:
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        got = _recv_exactly(s, len(payload))
        sender.join()
    assert got == payload
    assert proxy.stats.bytes_up == len(payload) and proxy.stats.bytes_down == len(payload)


def test_delay_holds_each_direction_half_the_round_trip(proxy: FaultProxy) -> None:
    proxy.delay(200.0, jitter_ms=20.0)
    with _connect(proxy) as s:
        for i in range(3):
            t0 = time.monotonic()
            s.sendall(b"ping%d" % i)
            assert _recv_exactly(s, 5) == b"ping%d" % i
            # a lower bound only: load can make it longer, never shorter
            assert time.monotonic() - t0 >= 0.195
    proxy.delay(0.0)
    assert proxy.rtt_ms == 0.0


def test_blackhole_holds_traffic_and_new_connections_until_lifted(proxy: FaultProxy) -> None:
    with _connect(proxy) as s:
        s.sendall(b"before")
        assert _recv_exactly(s, 6) == b"before"
        proxy.blackhole()
        assert proxy.blackholed
        s.sendall(b"during")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(16)
        late = _connect(proxy)  # accepted by the kernel, then nothing
        late.sendall(b"new")
        late.settimeout(0.5)
        with pytest.raises(TimeoutError):
            late.recv(16)
        proxy.blackhole(False)
        s.settimeout(10)
        late.settimeout(10)
        assert _recv_exactly(s, 6) == b"during"  # held, then delivered: as a healed partition
        assert _recv_exactly(late, 3) == b"new"
        late.close()


def test_reset_aborts_open_connections_and_refuse_rejects_new_ones(proxy: FaultProxy) -> None:
    s = _connect(proxy)
    s.sendall(b"x")
    assert _recv_exactly(s, 1) == b"x"
    assert proxy.reset() == 1
    with pytest.raises(ConnectionResetError):
        s.sendall(b"y")
        s.recv(1)  # either call sees the RST
        s.recv(1)
    s.close()
    proxy.refuse()
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # at connect or at the first use
        with _connect(proxy) as r:
            r.sendall(b"z")
            r.recv(1)
            r.recv(1)
    proxy.refuse(False)
    with _connect(proxy) as ok:
        ok.sendall(b"back")
        assert _recv_exactly(ok, 4) == b"back"
    wait_for(lambda: proxy.open_connections() == 0, timeout=10, what="proxy connections closed")


def test_retarget_sends_new_connections_to_the_new_upstream(proxy: FaultProxy) -> None:
    class _Upper(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data = self.request.recv(100)
            self.request.sendall(data.upper())

    server = _Server(("127.0.0.1", 0), _Upper)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxy.retarget(f"127.0.0.1:{server.server_address[1]}")
        with _connect(proxy) as s:
            s.sendall(b"abc")
            assert _recv_exactly(s, 3) == b"ABC"
    finally:
        server.shutdown()
        server.server_close()


def test_a_postgresql_session_through_the_proxy(pg_url: str) -> None:
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    upstream = f"{info.get('host') or '127.0.0.1'}:{info.get('port') or 5432}"
    with FaultProxy(upstream, name="pg") as p:
        info.update(host="127.0.0.1", port=str(p.port))
        url = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
        p.delay(40.0)
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
            p.blackhole()
            result: list[object] = []
            t = threading.Thread(target=lambda: result.append(conn.execute("SELECT 7").fetchone()))
            t.start()
            t.join(0.5)
            assert t.is_alive() and not result  # the statement hangs: no error, no answer
            p.blackhole(False)
            t.join(30)
            assert result == [(7,)]


def test_stopping_with_open_and_blackholed_connections_logs_no_error(
    echo: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A test that fails stops its proxy with connections still open (often blackholed): each used to
    log an asyncio ERROR with a CancelledError traceback, which buried the real failure in its output."""
    p = FaultProxy(echo, name="stop", seed=1).start()
    socks = [_connect(p) for _ in range(3)]
    for s in socks:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    wait_for(lambda: p.open_connections() == 3, 10, what="three connections through")
    p.blackhole()
    socks[0].sendall(b"held")
    late = _connect(p)  # accepted, then held by the blackhole
    wait_for(lambda: p.stats.accepted == 4, 10, what="the fourth connection accepted")
    with caplog.at_level("ERROR"):
        p.stop()
    for s in [*socks, late]:
        s.close()
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]
