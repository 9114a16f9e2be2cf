"""The Gateway service: Endorse, Submit, CommitStatus, Evaluate and ChaincodeEvents."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.peer import (
    chaincode_event_pb2,
    proposal_response_pb2,
)
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from gxsubmit.emulator import chaincode as cc
from gxsubmit.emulator.aborts import _Abort, _detail, _expire, _orderers_unavailable, _send_abort
from gxsubmit.emulator.core import _Core
from gxsubmit.emulator.hostile import HostilePeer
from gxsubmit.emulator.ledger import TxLocation
from gxsubmit.emulator.network import CHANNEL, ENDORSING_ORGS
from gxsubmit.emulator.validation import (
    TX,
    CreatorInvalid,
    EndorserError,
    TxInfo,
    UnpackError,
    parse_envelope,
    unpack_proposal,
    verify_signature,
)

_READERS_DENIED = (
    "failed evaluating policy on signed data during check policy [/Channel/Application/Readers]: "
    "[implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 of the "
    "'Readers' sub-policies to be satisfied]"
)


class _Gateway(gateway_pb2_grpc.GatewayServicer):  # type: ignore[misc]
    def __init__(self, core: _Core) -> None:
        self.core = core
        self.local = core.endorsers["Org1MSP"]
        self.hostile = HostilePeer(core.rng, core.counters)

    async def _gate(self, rpc: str) -> None:
        core = self.core
        core.counters[f"rpc_{rpc}"] += 1
        f = core.faults
        if core.fatal is not None:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, core.fatal)
        if f.in_outage():
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; gateway unavailable"
            )
        delay = f.latency_for(rpc, core.rng)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _hang(self, context: grpc.aio.ServicerContext[Any, Any], cap: float) -> None:
        remaining = context.time_remaining()
        await asyncio.sleep(min(cap, remaining + 0.2) if remaining is not None else cap)

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], err: _Abort) -> NoReturn:
        self.core.counters["rejected"] += 1
        self.core.counters[f"rejected_{err.code.name}"] += 1
        await _send_abort(context, err)

    def _peer_detail(self, message: str) -> gateway_pb2.ErrorDetail:
        return _detail(self.local.address, self.local.mspid, message)

    # -- Evaluate ----------------------------------------------------------------------------

    async def Evaluate(
        self, request: gateway_pb2.EvaluateRequest, context: Any
    ) -> gateway_pb2.EvaluateResponse:
        try:
            await self._gate("Evaluate")
            resp = self._evaluate(request)
            return self.hostile.evaluate(resp) if self.core.roll(self.core.faults.hostile) else resp
        except _Abort as err:
            await self._fail(context, err)

    def _evaluate(self, request: gateway_pb2.EvaluateRequest) -> gateway_pb2.EvaluateResponse:
        try:
            pp = unpack_proposal(request.proposed_transaction)
        except UnpackError as exc:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"failed to unpack transaction proposal: {exc}"
            ) from None
        unknown = [o for o in request.target_organizations if o not in ENDORSING_ORGS]
        if unknown:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"no endorsing peers found for org(s): {unknown}"
            )
        try:
            _info, res = self.core.simulate(pp)
        except EndorserError as exc:
            d = self._peer_detail(exc.message)
            if exc.no_response:
                code = (
                    grpc.StatusCode.UNAVAILABLE
                    if "expired" in exc.message or "timestamp" in exc.message
                    else grpc.StatusCode.ABORTED
                )
                raise _Abort(
                    code, "failed to evaluate transaction, see attached details for more info", [d]
                ) from None
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"evaluate call to endorser returned error: {exc.message}",
                [d],
            ) from None
        except cc.ChaincodeError as exc:
            msg = f"chaincode response {exc.status}, {exc.message}"
            raise _Abort(
                grpc.StatusCode.UNKNOWN,
                f"evaluate call to endorser returned error: {msg}",
                [self._peer_detail(msg)],
            ) from None
        return gateway_pb2.EvaluateResponse(
            result=proposal_response_pb2.Response(status=200, payload=res.payload)
        )

    # -- Endorse -----------------------------------------------------------------------------

    async def Endorse(self, request: gateway_pb2.EndorseRequest, context: Any) -> gateway_pb2.EndorseResponse:
        core = self.core
        try:
            await self._gate("Endorse")
            if core.roll(core.faults.endorse_unavailable):
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE, "failed to find any endorsing peers for the transaction"
                )
            if core.roll(core.faults.endorse_timeout):
                await self._hang(context, 10.0)
                raise _Abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "endorsement timeout expired while collecting first endorsement",
                )
            resp = self._endorse(request)
            return self.hostile.endorse(resp) if core.roll(core.faults.hostile) else resp
        except _Abort as err:
            await self._fail(context, err)

    def _endorse(self, request: gateway_pb2.EndorseRequest) -> gateway_pb2.EndorseResponse:
        core = self.core
        try:
            pp = unpack_proposal(request.proposed_transaction)
        except UnpackError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        orgs = list(dict.fromkeys(request.endorsing_organizations)) or list(ENDORSING_ORGS)
        unknown = [o for o in orgs if o not in ENDORSING_ORGS]
        if unknown:
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE, f"failed to find any endorsing peers for org(s): {unknown}"
            )
        if core.faults.endorse_mismatch_in_flight and any(i.tx_id == pp.tx_id for i in core.pending):
            raise _Abort(grpc.StatusCode.ABORTED,
                         "failed to assemble transaction: ProposalResponsePayloads do not match")
        try:
            info, res = core.simulate(pp)
        except EndorserError as exc:
            raise _Abort(
                grpc.StatusCode.ABORTED,
                "failed to endorse transaction, see attached details for more info",
                [self._peer_detail(exc.message)],
            ) from None
        except cc.ChaincodeError as exc:
            raise _Abort(
                grpc.StatusCode.ABORTED,
                "failed to endorse transaction, see attached details for more info",
                [self._peer_detail(f"chaincode response {exc.status}, {exc.message}")],
            ) from None
        payload = core.prepare(pp, info, res, orgs)
        core.counters["endorsed"] += 1
        return gateway_pb2.EndorseResponse(prepared_transaction=common_pb2.Envelope(payload=payload))

    # -- Submit ------------------------------------------------------------------------------

    async def Submit(self, request: gateway_pb2.SubmitRequest, context: Any) -> gateway_pb2.SubmitResponse:
        core = self.core
        try:
            await self._gate("Submit")
            if not request.HasField("prepared_transaction"):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "a prepared transaction is required")
            env = request.prepared_transaction
            if not env.signature:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "prepared transaction must be signed")
            if request.channel_id != CHANNEL:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"channel '{request.channel_id}' not found")
            if core.roll(core.faults.submit_unavailable):
                raise _orderers_unavailable()
            if core.roll(core.faults.submit_timeout):
                await self._hang(context, 10.0)
                raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
            info = self._check_envelope(request, env)
            lost = core.roll(core.faults.submit_lost_ack)
            core.order(info)
            core.counters["submitted"] += 1
            if lost:
                core.counters["lost_acks"] += 1
                raise _orderers_unavailable()
            return gateway_pb2.SubmitResponse()
        except _Abort as err:
            await self._fail(context, err)

    def _check_envelope(self, request: gateway_pb2.SubmitRequest, env: common_pb2.Envelope) -> TxInfo:
        """What the orderer's broadcast filters check, plus the parse the committer would do."""
        core = self.core
        limit = core.faults.orderer_max_bytes
        if limit and env.ByteSize() > limit:
            raise _Abort(
                grpc.StatusCode.ABORTED,
                "received unsuccessful response from orderer: status=REQUEST_ENTITY_TOO_LARGE, "
                f"info=message payload is {env.ByteSize()} bytes and exceeds maximum message size "
                f"{limit} bytes",
            )
        cached = core.endorsed.get(request.transaction_id)
        if cached is not None and cached.payload == env.payload:
            info = cached
        else:
            info = parse_envelope(env, core.registry, core.endorser_keys)
            if info.code == TX.BAD_PAYLOAD and not info.tx_id:
                raise _Abort(
                    grpc.StatusCode.ABORTED,
                    "received unsuccessful response from orderer: status=BAD_REQUEST, "
                    "info=bad payload: could not unmarshal envelope payload",
                )
        creator = info.creator
        problem = ""
        if creator is None:
            problem = (
                "implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy "
                "requires 1 of the 'Writers' sub-policies to be satisfied"
            )
        elif creator.expired(time.time()):
            problem = "broadcast client identity expired"
        elif not verify_signature(creator.public_key, env.payload, env.signature):
            problem = (
                "implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy "
                "requires 1 of the 'Writers' sub-policies to be satisfied"
            )
        if problem:
            if core.envelope_check == "orderer" or creator is None:
                raise _Abort(
                    grpc.StatusCode.ABORTED,
                    f"received unsuccessful response from orderer: status=FORBIDDEN, info={problem}",
                )
            info = dataclasses.replace(info, code=TX.BAD_CREATOR_SIGNATURE)
        return info

    # -- CommitStatus --------------------------------------------------------------------------

    def _check_signed(self, request_bytes: bytes, identity: bytes, signature: bytes) -> None:
        try:
            creator = self.core.registry.resolve(identity)
        except CreatorInvalid:
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, _READERS_DENIED) from None
        if not verify_signature(creator.public_key, request_bytes, signature):
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, _READERS_DENIED)

    async def CommitStatus(self, request: gateway_pb2.SignedCommitStatusRequest, context: Any) -> Any:
        core = self.core
        try:
            await self._gate("CommitStatus")
            if not request.request:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "a commit status request is required")
            try:
                req = gateway_pb2.CommitStatusRequest.FromString(request.request)
            except DecodeError as exc:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid status request: {exc}") from None
            self._check_signed(request.request, req.identity, request.signature)
            if req.channel_id != CHANNEL:
                raise _Abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"Failed to get policy manager for channel [{req.channel_id}]",
                )
            if core.roll(core.faults.commit_status_unavailable):
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "failed to connect to ledger: peer unavailable")
            loc = core.ledger.index.get(req.transaction_id)
            if loc is None:
                loc = await self._wait_commit(req.transaction_id, context)
            resp = gateway_pb2.CommitStatusResponse(result=loc.code, block_number=loc.block)
            return self.hostile.commit_status(resp) if core.roll(core.faults.hostile) else resp
        except _Abort as err:
            await self._fail(context, err)

    async def _wait_commit(self, tx_id: str, context: Any) -> TxLocation:
        """Park on a future the committer resolves; one timer enforces the call's deadline."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[TxLocation] = loop.create_future()
        waiters = self.core.waiters
        lst = waiters.get(tx_id)
        if lst is None:
            waiters[tx_id] = [fut]
        else:
            lst.append(fut)
        remaining = context.time_remaining()
        timer = loop.call_later(max(remaining, 0.0), _expire, fut) if remaining is not None else None
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.cancel()
            lst = waiters.get(tx_id)
            if lst is not None:  # still there: we were not resolved by a block (deadline, cancel)
                if fut in lst:
                    lst.remove(fut)
                if not lst:
                    del waiters[tx_id]

    # -- ChaincodeEvents -------------------------------------------------------------------------

    def _events_start(
        self, request: gateway_pb2.SignedChaincodeEventsRequest
    ) -> tuple[str, int, tuple[int, int] | None]:
        """(chaincode, first block, (block, tx_num) to skip through), per the gateway's rules."""
        ledger = self.core.ledger
        if not request.request:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "a chaincode events request is required")
        try:
            req = gateway_pb2.ChaincodeEventsRequest.FromString(request.request)
        except DecodeError as exc:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid chaincode events request: {exc}"
            ) from None
        self._check_signed(request.request, req.identity, request.signature)
        if req.channel_id != CHANNEL:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"channel {req.channel_id} not found")
        loc = ledger.index.get(req.after_transaction_id) if req.after_transaction_id else None
        if loc is not None:
            return req.chaincode_id, loc.block, (loc.block, loc.tx_num)
        kind = req.start_position.WhichOneof("Type") if req.HasField("start_position") else None
        if kind in (None, "next_commit"):
            return req.chaincode_id, ledger.height, None
        if kind == "specified":
            return req.chaincode_id, int(req.start_position.specified.number), None
        type_name = {"newest": "SeekPosition_Newest", "oldest": "SeekPosition_Oldest"}.get(kind, str(kind))
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid start position type: *orderer.{type_name}")

    async def ChaincodeEvents(
        self, request: gateway_pb2.SignedChaincodeEventsRequest, context: Any
    ) -> AsyncIterator[gateway_pb2.ChaincodeEventsResponse]:
        core = self.core
        ledger = core.ledger
        try:
            await self._gate("ChaincodeEvents")
            chaincode_id, block, skip_through = self._events_start(request)
        except _Abort as err:
            await self._fail(context, err)
        while True:
            while block < ledger.height:
                recs = ledger.block_events[block]
                events = [
                    chaincode_event_pb2.ChaincodeEvent(
                        chaincode_id=r.chaincode, tx_id=r.tx_id, event_name=r.name, payload=r.payload
                    )
                    for r in recs
                    if r.chaincode == chaincode_id
                    and (skip_through is None or block != skip_through[0] or r.tx_num > skip_through[1])
                ]
                if events:
                    yield gateway_pb2.ChaincodeEventsResponse(events=events, block_number=block)
                block += 1
            await core.wait_block(block, 0.5)  # the timeout bounds how late an outage is noticed
            if core.faults.in_outage():
                await self._fail(context, _Abort(grpc.StatusCode.UNAVAILABLE, "gateway unavailable"))


