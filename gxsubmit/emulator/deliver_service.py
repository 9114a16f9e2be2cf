"""The peer's DeliverFiltered service over the emulated ledger."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fabric_protos.common import common_pb2

from gxsubmit.emulator import wire
from gxsubmit.emulator.aborts import _Abort
from gxsubmit.emulator.deliver import DEFAULT_TIME_WINDOW_S, FilteredBlocks, Seek, parse_seek
from gxsubmit.emulator.gateway import _Gateway
from gxsubmit.emulator.network import CHANNEL

_STATUS = {code: wire.deliver_status(code) for code in common_pb2.Status.values()}


def _raw(data: bytes) -> bytes:
    return data


def _client_cert_hash(context: Any) -> bytes:
    """SHA-256 of the DER client certificate of this TLS session (b"" if the client sent none)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return b""
    cert = x509.load_pem_x509_certificate(pems[0])
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


class _Deliver:
    """``/protos.Deliver/DeliverFiltered`` as a Fabric 2.5 peer serves it next to the Gateway.

    Each Envelope read from the stream is a seek; its blocks are sent in order, then SUCCESS, then
    the next seek is read. A refused seek (see ``deliver.parse_seek``), FAIL_IF_NOT_READY past the
    head or an identity expiring mid-seek is answered with that status and ends the RPC (gRPC OK),
    as the peer does. Outages and a failed committer end it with gRPC UNAVAILABLE instead.
    Responses go out pre-serialized: a block is encoded once for every stream that follows the head.
    """

    def __init__(self, gateway: _Gateway, *, bind_tls: bool = False) -> None:
        self.gateway = gateway
        self.core = gateway.core
        self.bind_tls = bind_tls
        self.blocks = FilteredBlocks(gateway.core.ledger, CHANNEL)
        tw = gateway.core.time_window_s
        self.time_window_s = tw if tw is not None else DEFAULT_TIME_WINDOW_S

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "protos.Deliver",
            {
                "DeliverFiltered": grpc.stream_stream_rpc_method_handler(
                    self.DeliverFiltered,
                    request_deserializer=common_pb2.Envelope.FromString,
                    response_serializer=_raw,
                )
            },
        )

    async def _unavailable(self, context: Any) -> NoReturn:
        core = self.core
        message = core.fatal or "failed to connect to all addresses; peer unavailable"
        await self.gateway._fail(context, _Abort(grpc.StatusCode.UNAVAILABLE, message))

    async def DeliverFiltered(
        self, requests: AsyncIterator[common_pb2.Envelope], context: Any
    ) -> AsyncIterator[bytes]:
        core = self.core
        ledger = core.ledger
        faults = core.faults
        try:
            await self.gateway._gate("DeliverFiltered")
        except _Abort as err:
            await self.gateway._fail(context, err)
        async for env in requests:
            if faults.in_outage() or core.fatal is not None:
                await self._unavailable(context)
            seek = parse_seek(
                env,
                registry=core.registry,
                channel=CHANNEL,
                height=ledger.height,
                now=time.time(),
                time_window_s=self.time_window_s,
                tls_cert_hash=_client_cert_hash(context) if self.bind_tls else None,
            )
            if not isinstance(seek, Seek):
                core.counters[f"deliver_status_{seek}"] += 1
                yield _STATUS[seek]
                return
            core.counters["deliver_seeks"] += 1
            status = common_pb2.SUCCESS
            number = seek.start
            while True:
                if seek.fail_if_not_ready and number > ledger.height - 1:
                    status = common_pb2.NOT_FOUND
                    break
                if seek.not_found:
                    status = common_pb2.NOT_FOUND
                    break
                while number >= ledger.height:
                    await core.wait_block(number, 0.5)  # the timeout bounds how late an outage is noticed
                    if faults.in_outage() or core.fatal is not None:
                        await self._unavailable(context)
                if faults.in_outage() or core.fatal is not None:
                    await self._unavailable(context)
                if seek.creator.expired(time.time()):
                    status = common_pb2.FORBIDDEN
                    break
                core.counters["deliver_blocks"] += 1
                data = self.blocks.get(number)
                if core.roll(faults.hostile):
                    lies, then_real = self.gateway.hostile.block(data, number, CHANNEL)
                    for lie in lies:
                        yield lie
                    if then_real:
                        yield data
                else:
                    yield data
                if number == seek.stop:
                    break
                number += 1
            core.counters[f"deliver_status_{status}"] += 1
            yield _STATUS[status]
            if status != common_pb2.SUCCESS:
                return


