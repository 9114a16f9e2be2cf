"""Async Fabric Gateway client on one grpc.aio channel.

Every RPC has a deadline; every failure leaves this module as a classified :class:`FabricError`.
The client never retries by itself: the worker decides from the error class
(docs/design.md#fabric-gateway-client).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2_grpc

from gxsubmit.fabric.answers import (
    CommitResult,
    FilteredBlock,
    parse_commit_status,
    parse_deliver,
    parse_endorse,
    parse_evaluate,
)
from gxsubmit.fabric.errors import ErrorClass, FabricError, from_rpc_error
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import (
    Prepared,
    Proposal,
    build_proposal,
    chaincode_events_request,
    commit_status_request,
    endorse_request,
    evaluate_request,
    new_nonce,
    seek_envelope,
    sign_envelope,
    submit_request,
)

__all__ = [
    "ChaincodeEvent",
    "CommitResult",
    "Deadlines",
    "EventBlock",
    "FilteredBlock",
    "GatewayClient",
    "channel_options",
]

#: Fabric's default maximum message size (peer.grpc maxRecvMsgSize / maxSendMsgSize).
MAX_MESSAGE_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class Deadlines:
    """Per-RPC deadlines in seconds (the fabric-samples conventions; the official clients have none)."""

    evaluate: float = 5.0
    endorse: float = 15.0
    submit: float = 5.0
    commit_status: float = 60.0


@dataclass(frozen=True)
class ChaincodeEvent:
    block_number: int
    tx_id: str
    chaincode_id: str
    event_name: str
    payload: bytes


@dataclass(frozen=True)
class EventBlock:
    block_number: int
    events: tuple[ChaincodeEvent, ...]


def channel_options(*, server_name: str | None, keepalive_s: float) -> list[tuple[str, int | str]]:
    """gRPC channel arguments: keepalive while calls are active, Fabric's message limits, TLS name."""
    opts: list[tuple[str, int | str]] = [
        ("grpc.keepalive_time_ms", max(1000, int(keepalive_s * 1000))),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Pings only while RPCs are in flight (commit waits, event streams): servers with the default
        # enforcement policy answer idle pings with GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),  # retries are the worker's decision, by error class
        # No per-call channelz bookkeeping (call counters, timestamps) on the hot path.
        ("grpc.enable_channelz", 0),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
        opts.append(("grpc.default_authority", server_name))
    return opts


class GatewayClient:
    """One channel to one gateway peer. Plaintext only when ``tls_root`` is None (caller's --insecure)."""

    def __init__(
        self,
        *,
        target: str,
        tls_root: bytes | None,
        server_name: str | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        deadlines: Deadlines | None = None,
        keepalive_s: float = 60.0,
    ) -> None:
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key must be given together")
        if tls_root is None and client_cert is not None:
            raise ValueError("a client TLS certificate needs TLS (tls_root)")
        self.target = target
        self.deadlines = deadlines or Deadlines()
        self.tls = tls_root is not None
        options = channel_options(server_name=server_name, keepalive_s=keepalive_s)
        if tls_root is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls_root, private_key=client_key, certificate_chain=client_cert
            )
            self._channel = grpc.aio.secure_channel(target, creds, options=options)
        self._stub = gateway_pb2_grpc.GatewayStub(self._channel)
        # The hot three, built once and fed pre-serialised bytes (no serializer layer per call); the
        # Submit answer is an empty message, so it is not parsed at all. Registered with the channel, as
        # the generated stubs do: grpcio then skips the per-call method lookup (an echo call as in
        # bench/grpc_echo.py: 120-136 us of client CPU instead of 132-164, 4 interleaved rounds; per
        # command end to end that is ~3 %, inside the floor A/B's run-to-run spread).
        # Answers stay bytes here and are decoded by gxsubmit.fabric.answers: an answer that does not
        # parse is then a mapped FabricError like any other, not an error inside grpcio.
        self._endorse = self._channel.unary_unary("/gateway.Gateway/Endorse", _registered_method=True)
        self._submit = self._channel.unary_unary("/gateway.Gateway/Submit", _registered_method=True)
        self._evaluate = self._channel.unary_unary("/gateway.Gateway/Evaluate", _registered_method=True)
        self._commit_status = self._channel.unary_unary(
            "/gateway.Gateway/CommitStatus", _registered_method=True
        )
        # The peer's Deliver service shares the gateway's address (and this channel's connection).
        self._deliver_filtered = self._channel.stream_stream(
            "/protos.Deliver/DeliverFiltered",
            request_serializer=common_pb2.Envelope.SerializeToString,
            _registered_method=True,
        )

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109 - contract name
        """Connect now; FabricError(stage="connect", TRANSIENT) if not ready within ``timeout``."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            state = self._channel.get_state(try_to_connect=False)
            raise FabricError(
                stage="connect",
                error_class=ErrorClass.TRANSIENT,
                error_code="GATEWAY_UNAVAILABLE",
                message=f"gateway {self.target} not ready within {timeout:g}s (channel {state.name})",
            ) from None

    def connectivity(self) -> str:
        return str(self._channel.get_state(try_to_connect=False).name)

    async def evaluate(self, p: Proposal) -> bytes:
        """Run the transaction on one peer without ordering it; returns the chaincode's result."""
        try:
            request = evaluate_request(p).SerializeToString()
            data = await self._evaluate(request, timeout=self.deadlines.evaluate)
        except grpc.RpcError as err:
            raise from_rpc_error("evaluate", err, tx_id=p.tx_id) from None
        return parse_evaluate(data, p.tx_id)

    async def transaction_known(self, identity: SigningIdentity, *, channel: str, tx_id: str) -> bool:
        """Whether the gateway peer's ledger holds ``tx_id`` (qscc GetTransactionByID, any validation
        code). False only on the block store's own answer naming that tx id ("no such transaction ID
        [<tx id>] in index"); any other failure raises, because it does not say the tx is absent."""
        p = build_proposal(identity, channel=channel, chaincode="qscc", function="GetTransactionByID",
                           args=[channel, tx_id], nonce=new_nonce())
        try:
            await self.evaluate(p)
        except FabricError as err:
            if f"no such transaction ID [{tx_id}]" in str(err):
                return False
            raise
        return True

    async def endorse(self, p: Proposal) -> Prepared:
        """Collect endorsements; returns the unsigned envelope after checking it is our transaction."""
        try:
            data = await self._endorse(endorse_request(p).SerializeToString(), timeout=self.deadlines.endorse)
        except grpc.RpcError as err:
            raise from_rpc_error("endorse", err, tx_id=p.tx_id) from None
        return parse_endorse(data, p)

    async def submit(self, identity: SigningIdentity, prepared: Prepared) -> None:
        """Sign the envelope and hand it to the orderers. A transport failure here is IN_DOUBT."""
        request = submit_request(prepared, sign_envelope(identity, prepared.envelope))
        try:
            await self._submit(request.SerializeToString(), timeout=self.deadlines.submit)
        except grpc.RpcError as err:
            raise from_rpc_error("submit", err, tx_id=prepared.tx_id) from None

    async def commit_status(
        self,
        identity: SigningIdentity,
        *,
        channel: str,
        tx_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 - becomes the gRPC deadline
    ) -> CommitResult:
        """Wait (up to the deadline) for the commit of ``tx_id``; the first copy's code for duplicates."""
        request = commit_status_request(identity, channel=channel, tx_id=tx_id)
        try:
            data = await self._commit_status(
                request.SerializeToString(),
                timeout=timeout if timeout is not None else self.deadlines.commit_status,
            )
        except grpc.RpcError as err:
            raise from_rpc_error("commit_status", err, tx_id=tx_id) from None
        return parse_commit_status(data, tx_id)

    async def chaincode_events(
        self,
        identity: SigningIdentity,
        *,
        channel: str,
        chaincode: str,
        start_block: int | None = None,
        after_tx_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - becomes the gRPC deadline
    ) -> AsyncGenerator[EventBlock, None]:
        """Events of VALID transactions, one item per block; the stream does not end by itself.

        Resume after a checkpoint with ``start_block`` plus ``after_tx_id``. ``timeout`` bounds the whole
        stream (None = until cancelled; keepalive detects a dead peer).
        """
        request = chaincode_events_request(
            identity, channel=channel, chaincode=chaincode, start_block=start_block, after_tx_id=after_tx_id
        )
        call = self._stub.ChaincodeEvents(request, timeout=timeout)
        try:
            async for resp in call:
                block = int(resp.block_number)
                yield EventBlock(
                    block_number=block,
                    events=tuple(
                        ChaincodeEvent(
                            block_number=block,
                            tx_id=e.tx_id,
                            chaincode_id=e.chaincode_id,
                            event_name=e.event_name,
                            payload=bytes(e.payload),
                        )
                        for e in resp.events
                    ),
                )
        except grpc.RpcError as err:
            raise from_rpc_error("events", err) from None
        finally:
            call.cancel()

    async def filtered_blocks(
        self,
        identity: SigningIdentity,
        *,
        channel: str,
        start_block: int | None,
        tls_cert_hash: bytes | None = None,
    ) -> AsyncGenerator[FilteredBlock, None]:
        """The peer's filtered blocks from ``start_block`` (None: the newest committed block first), for
        ever. Any end of the stream is a FabricError at stage "deliver": the caller reconnects."""
        envelope = seek_envelope(
            identity, channel=channel, start_block=start_block, tls_cert_hash=tls_cert_hash
        )
        call = self._deliver_filtered()
        try:
            # The write side stays open: a peer reads the next seek only after this one has ended.
            await call.write(envelope)
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise FabricError(
                        stage="deliver",
                        error_class=ErrorClass.TRANSIENT,
                        error_code="DELIVER_ENDED",
                        message=f"block stream on {channel} ended by the peer",
                    )
                block = parse_deliver(resp, channel)
                if block is not None:
                    yield block
        except grpc.RpcError as err:
            raise from_rpc_error("deliver", err) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
