"""Errors as the gateway sends them: gRPC aborts with Fabric's ErrorDetail list."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from fabric_protos.gateway import gateway_pb2
from google.protobuf import any_pb2  # type: ignore[import-untyped]
from google.rpc import status_pb2
from grpc_status import rpc_status

from gxsubmit.emulator.ledger import TxLocation
from gxsubmit.emulator.network import ORDERER_ADDRESS, ORDERER_MSP


def _detail(address: str, msp_id: str, message: str) -> gateway_pb2.ErrorDetail:
    return gateway_pb2.ErrorDetail(address=address, msp_id=msp_id, message=message)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[gateway_pb2.ErrorDetail] = ()):
        super().__init__(message)
        self.code, self.message, self.details = code, message, list(details)


async def _send_abort(context: grpc.aio.ServicerContext[Any, Any], err: _Abort) -> NoReturn:
    if not err.details:
        await context.abort(err.code, err.message)
    packed = []
    for d in err.details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    st = status_pb2.Status(code=err.code.value[0], message=err.message, details=packed)
    await context.abort_with_status(rpc_status.to_status(st))
    raise AssertionError("unreachable")  # abort_with_status raises


def _orderers_unavailable() -> _Abort:
    return _Abort(
        grpc.StatusCode.UNAVAILABLE,
        "no orderers could successfully process transaction",
        [
            _detail(
                ORDERER_ADDRESS,
                ORDERER_MSP,
                "rpc error: code = Unavailable desc = connection error: connection refused",
            )
        ],
    )


def _expire(fut: asyncio.Future[TxLocation]) -> None:
    if not fut.done():
        fut.set_exception(_Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded"))
