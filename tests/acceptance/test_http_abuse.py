"""A real supervisor's probe port under 2,000 idle connections and a /metrics flood: /healthz answers
every probe, and the supervisor keeps its workers (nothing restarts, the service stays ready)."""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any

from harness import EmulatorProc, ServiceProc, service_settings
from tooling import sockets_available
from waiting import wait_for


def _get(port: int, path: str, timeout: float = 10.0) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split()[1])


def test_idle_connections_and_a_metrics_flood_against_the_supervisor(
    pg_url: str, schema: str, wallet: Path, tmp_path: Path, procs: list[Any], emulator: EmulatorProc
) -> None:
    n = sockets_available(2000, spare=300, least=1000)
    svc = ServiceProc("http", tmp_path, service_settings(pg_url, schema, wallet, emulator))
    procs.append(svc)
    svc.start()
    svc.wait_ready()
    pids_before = sorted(w["pid"] for w in svc.status()["workers"].values())
    idle: list[socket.socket] = []
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            # a scrape still waiting for its turn may be closed to make room (the oldest waiting goes)
            with contextlib.suppress(OSError, IndexError, ValueError):
                _get(svc.port, "/metrics", timeout=30)

    floods = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    try:
        for t in floods:
            t.start()
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
            if i % 3 == 0:
                s.sendall(b"GET /status HTTP/1.1\r\n")  # never finished
            idle.append(s)
        for _ in range(20):
            assert _get(svc.port, "/healthz") == 200
        assert _get(svc.port, "/readyz") == 200
    finally:
        stop.set()
        for s in idle:
            s.close()
        for t in floods:
            t.join(30)
    after = svc.status()["workers"].values()
    assert sorted(w["pid"] for w in after) == pids_before and all(w["restarts"] == 0 for w in after)
    wait_for(lambda: svc.readyz()[0] == 200, 30, what="still ready")
    assert svc.terminate(60) == 0
