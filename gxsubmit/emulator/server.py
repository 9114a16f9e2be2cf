"""The Fabric Gateway emulator: the five Gateway RPCs and the peer's DeliverFiltered over grpc.aio.

It plays gateway peer (Org1), a second endorsing peer (Org2), the orderer and the committer. All
state lives on one asyncio loop in a background thread, so nothing needs locks; the block cutter
is a task on that loop. Deliver and DeliverWithPrivateData (full blocks) are not served: the ledger
keeps no envelopes, so those methods answer UNIMPLEMENTED as for any unknown method.

This module holds the public object that starts and stops it; the parts are ``core`` (the state
machine), ``gateway`` and ``deliver_service`` (the gRPC services), ``aborts`` (errors as the gateway
sends them) and ``network`` (names, addresses, the endorsing peers' identities).
"""

from __future__ import annotations

import asyncio
import random
import resource
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import uvloop
from cryptography import x509

from gxsubmit.emulator.core import _Core
from gxsubmit.emulator.deliver_service import _Deliver
from gxsubmit.emulator.faults import Faults
from gxsubmit.emulator.gateway import _Gateway
from gxsubmit.emulator.hostile import add_gateway_servicer
from gxsubmit.emulator.ledger import Ledger
from gxsubmit.emulator.network import CHANNEL, ENDORSING_ORGS, EmulatorError, _load_endorsers
from gxsubmit.emulator.validation import TX, IdentityRegistry

__all__ = ["CHANNEL", "ENDORSING_ORGS", "Emulator", "EmulatorError"]


def _process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Emulator:
    """A Fabric Gateway emulator serving on a background thread with its own event loop."""

    def __init__(
        self,
        *,
        wallet: Path,
        ledger: Path,
        listen: str = "127.0.0.1:0",
        insecure: bool = True,
        block_time: float = 0.25,
        block_size: int = 500,
        faults: Faults | None = None,
        msp_ids: Sequence[str] = ("Org1MSP",),
        fsync: bool = False,
        time_window_s: float | None = None,
        envelope_check: str = "orderer",
        seed: int | None = None,
        client_tls: bool = False,
    ) -> None:
        if block_size < 1 or block_time <= 0:
            raise EmulatorError("block size must be >= 1 and block time > 0")
        if client_tls and insecure:
            raise EmulatorError("mutual TLS (client_tls) needs TLS: not with insecure")
        if envelope_check not in ("orderer", "committer"):
            raise EmulatorError("envelope_check must be 'orderer' or 'committer'")
        self.wallet = Path(wallet)
        self.ledger_path = Path(ledger)
        self.listen = listen
        self.insecure = insecure
        self.block_time = block_time
        self.block_size = block_size
        self.faults = faults if faults is not None else Faults()
        self.msp_ids = tuple(msp_ids)
        self.fsync = fsync
        self.time_window_s = time_window_s
        self.envelope_check = envelope_check
        #: require a client TLS certificate (signed by the wallet's tlsca-cert) and check that deliver
        #: seeks are bound to it (ChannelHeader.tls_cert_hash), as a peer with clientAuthRequired does
        self.client_tls = client_tls
        self._rng = random.Random(seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._core: _Core | None = None
        self._cpu_clock: int | None = None
        self._cpu_final: float | None = None
        self._proc_cpu_start: float | None = None
        self._proc_cpu_final: float | None = None
        self.port = 0
        self.replayed = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def _load_cas(self) -> list[x509.Certificate]:
        path = self.wallet / "ca-cert"
        try:
            return x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            raise EmulatorError(f"{path}: {exc.strerror or exc}") from None
        except ValueError:
            raise EmulatorError(f"{path}: not a PEM certificate") from None

    def _credentials(self) -> grpc.ServerCredentials | None:
        if self.insecure:
            return None
        try:
            cert = (self.wallet / "server-cert").read_bytes()
            key = (self.wallet / "server-key").read_bytes()
        except OSError as exc:
            raise EmulatorError(f"TLS: {exc.filename}: {exc.strerror}") from None
        if not self.client_tls:
            return grpc.ssl_server_credentials([(key, cert)])
        try:
            client_ca = (self.wallet / "tlsca-cert").read_bytes()
        except OSError as exc:
            raise EmulatorError(f"TLS: {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=True
        )

    def start(self) -> int:
        """Start serving; returns the bound port. Raises EmulatorError if it cannot start."""
        if self._thread is not None:
            raise EmulatorError("already started")
        cas = self._load_cas()
        creds = self._credentials()
        self._proc_cpu_start = _process_cpu()
        self._thread = threading.Thread(target=self._run, args=(cas, creds), name="gx-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=60):
            raise EmulatorError("emulator did not start within 60 s")
        if self._error is not None:
            raise EmulatorError(str(self._error)) from self._error
        return self.port

    def _run(self, cas: list[x509.Certificate], creds: grpc.ServerCredentials | None) -> None:
        loop = uvloop.new_event_loop()  # ~0.1 ms less CPU per committed tx than asyncio's loop (grpc.aio)
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(cas, creds))
        except BaseException as exc:  # reported to start() or kept for stats
            self._error = exc
        finally:
            self._cpu_final = time.thread_time()
            self._ready.set()
            loop.close()

    async def _main(self, cas: list[x509.Certificate], creds: grpc.ServerCredentials | None) -> None:
        self._cpu_clock = time.pthread_getcpuclockid(threading.get_ident())
        ledger = Ledger(self.ledger_path, fsync=self.fsync, code_values=dict(TX.items()))
        self.replayed = ledger.open()
        endorsers = _load_endorsers(self.ledger_path.with_name(self.ledger_path.name + ".endorsers"))
        core = _Core(
            ledger=ledger,
            registry=IdentityRegistry({m: cas for m in self.msp_ids}),
            endorsers=endorsers,
            faults=self.faults,
            rng=self._rng,
            block_time=self.block_time,
            block_size=self.block_size,
            time_window_s=self.time_window_s,
            envelope_check=self.envelope_check,
        )
        self._core = core
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        )
        gateway = _Gateway(core)
        add_gateway_servicer(gateway, server)  # the generated registration, able to send raw bytes
        server.add_generic_rpc_handlers((_Deliver(gateway, bind_tls=self.client_tls).handler(),))
        try:
            port = (
                server.add_secure_port(self.listen, creds)
                if creds is not None
                else server.add_insecure_port(self.listen)
            )
        except RuntimeError as exc:
            raise EmulatorError(f"cannot listen on {self.listen}: {exc}") from None
        if not port:
            raise EmulatorError(f"cannot listen on {self.listen}")
        await server.start()
        cutter = asyncio.create_task(core.run_cutter())
        self._stop_event = asyncio.Event()
        self.port = port
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await server.stop(0.5)
            cutter.cancel()
            try:
                await cutter
            except (asyncio.CancelledError, Exception):
                pass  # a committer failure is already in core.fatal
            try:
                if core.fatal is None:
                    await core.cut()  # transactions the "orderer" accepted still make it into a block
            finally:
                ledger.close()

    def stop(self) -> None:
        """Stop serving (in-flight calls get 0.5 s), cut the last block, close the ledger."""
        loop, ev, thread = self._loop, self._stop_event, self._thread
        if thread is None:
            return
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass
        thread.join(timeout=30)
        self._thread = None
        self._proc_cpu_final = _process_cpu()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation ---------------------------------------------------------------------------

    def process_cpu_seconds(self) -> float:
        """CPU (user + system) of the whole process since ``start()``, until ``stop()``.

        Run as its own process (``gxsubmit emulator``, the bench) this is the emulator's full cost:
        the event-loop thread plus gRPC core's poller and executor threads (about a quarter on top
        of the loop). Embedded in another program it also counts that program's threads.
        """
        if self._proc_cpu_start is None:
            return 0.0
        end = self._proc_cpu_final if self._proc_cpu_final is not None else _process_cpu()
        return max(0.0, end - self._proc_cpu_start)

    def cpu_seconds(self) -> float:
        """CPU time of the emulator's event-loop thread (all Python request handling runs there)."""
        if self._cpu_final is not None and (self._thread is None or not self._thread.is_alive()):
            return self._cpu_final
        if self._cpu_clock is None:
            return 0.0
        try:
            return time.clock_gettime(self._cpu_clock)
        except OSError:
            return self._cpu_final or 0.0

    def stats(self) -> dict[str, Any]:
        """Counters: committed (all codes), valid, by_code, rejected (RPC errors), blocks, height, CPU.

        ``deliver_seeks``: DeliverFiltered seeks accepted (start position fixed); ``deliver_blocks``:
        filtered blocks sent over all streams.

        ``cpu_s``: whole-process CPU since start (see ``process_cpu_seconds``); ``loop_cpu_s``: the
        event-loop thread alone; ``cpu_ms_per_committed``: ``cpu_s`` per committed transaction.
        """
        core = self._core
        if core is None:
            return {"committed": 0, "valid": 0, "rejected": 0, "cpu_s": 0.0, "loop_cpu_s": 0.0}
        c = core.counters
        by_code = dict(core.ledger.counts)
        cpu = self.process_cpu_seconds()
        committed = c["committed"]
        return {
            "committed": committed,
            "valid": by_code.get("VALID", 0),
            "by_code": by_code,
            "rejected": c["rejected"],
            "rejected_by_code": {k[9:]: v for k, v in c.items() if k.startswith("rejected_")},
            "endorsed": c["endorsed"],
            "submitted": c["submitted"],
            "lost_acks": c["lost_acks"],
            "rpcs": {k[4:]: v for k, v in c.items() if k.startswith("rpc_")},
            "blocks": c["blocks"],
            "deliver_seeks": c["deliver_seeks"],
            "deliver_blocks": c["deliver_blocks"],
            "hostile": c["hostile"],
            "hostile_by_kind": {k[8:]: v for k, v in c.items() if k.startswith("hostile_")},
            "height": core.ledger.height,
            "pending": len(core.pending),
            "replayed": self.replayed,
            "fatal": core.fatal,
            "cpu_s": cpu,
            "loop_cpu_s": self.cpu_seconds(),
            "cpu_ms_per_committed": (cpu * 1000.0 / committed) if committed else None,
        }

