"""CPU per unary gRPC call of the installed grpcio, client and server, on this machine.

``python bench/grpc_echo.py [--calls N] [--concurrency C] [--size BYTES] [--rounds R]``

Half of gxsubmit's CPU per command is grpcio's C core (two unary calls: Endorse, Submit), so a grpcio
upgrade can move the saturation figures by itself. This isolates that cost: an echo server (grpc.aio,
its own process) and a grpc.aio client with uvloop, as the worker runs; it prints the CPU each side
spent per call (``getrusage``/``/proc``), per round. To compare versions, install each into a scratch
venv (``pip install grpcio==X uvloop``) and run this file with that venv's Python, interleaving the
versions: one run against another at a different time of day measures the machine, not grpcio.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import time
from typing import Any

import grpc

_SERVICE, _METHOD = "bench.Echo", "Call"


def _same(b: bytes) -> bytes:
    return b


def _serve(port: Any, ready: Any) -> None:
    async def main() -> None:
        async def call(req: bytes, _ctx: Any) -> bytes:
            return req

        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            _SERVICE, {_METHOD: grpc.unary_unary_rpc_method_handler(call, _same, _same)}
        )
        server.add_generic_rpc_handlers((handler,))
        port.value = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(
    port: int, server_pid: int, calls: int, concurrency: int, size: int
) -> tuple[float, float, float]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = channel.unary_unary(
        f"/{_SERVICE}/{_METHOD}", request_serializer=_same, response_deserializer=_same
    )
    payload = os.urandom(size)
    for _ in range(200):  # warm-up: connection, HTTP/2 windows
        await stub(payload)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await stub(payload)

    r0, s0, t0 = resource.getrusage(resource.RUSAGE_SELF), _proc_cpu(server_pid), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(calls)))
    r1, s1, t1 = resource.getrusage(resource.RUSAGE_SELF), _proc_cpu(server_pid), time.perf_counter()
    await channel.close()
    client = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return client / calls * 1e6, (s1 - s0) / calls * 1e6, calls / (t1 - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--size", type=int, default=2048, help="request and response bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the client's event loop")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    port, ready = mp.Value("i", 0), mp.Event()
    server = mp.Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    ready.wait(30)
    try:
        for n in range(1, args.rounds + 1):
            c, s, rate = asyncio.run(
                _round(port.value, server.pid or 0, args.calls, args.concurrency, args.size)
            )
            print(f"grpcio {grpc.__version__} {args.loop} round {n}: client {c:.0f} us/call, "
                  f"server {s:.0f} us/call, {rate:.0f} calls/s")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
