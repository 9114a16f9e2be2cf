"""The hostile-peer mode of the emulator: answers that are garbled, truncated, oversized or contradictory.

``Faults.hostile`` is the chance that one answer (an Endorse, Evaluate or CommitStatus reply, a block
on a DeliverFiltered stream) is replaced by a hostile one. What the mode does, and the line it keeps:

- Garbage instead of an answer; an answer cut short (down to zero bytes: which decodes as "VALID in
  block 0"); an answer padded to megabytes with an unknown field; a CommitStatus naming block 0 or
  block 2**64-1; a prepared transaction that is not the one proposed.
- On the block stream: a block numbered ahead (blocks skipped) or behind (one already sent, with made-up
  codes), entries listed twice with a second, contradictory code, entries for made-up tx ids with
  unknown validation codes, a status in the middle of the stream.
- It never states, in a well-formed and consistent answer, an outcome for a real transaction other than
  the ledger's: no client can tell such a lie from the truth (filtered blocks carry no signatures).
  So a client that commits a row only on a VALID answer about the row's exact tx id ends with rows that
  match the ledger, which is what the hostile-peer test audits.
"""

from __future__ import annotations

import os
import random
from typing import Any

import grpc
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.peer import events_pb2, transaction_pb2

__all__ = ["HostilePeer", "add_gateway_servicer"]

#: Padding of an "oversized" answer: large enough to cost a client real memory and parsing, well under
#: grpcio's (and Fabric's) 100 MB message cap.
_PAD_RANGE = (256 * 1024, 4 * 1024 * 1024)
_UNKNOWN_CODES = (26, 100, 253, 4242, 2**31 - 1)
#: The ways any answer can be broken (:meth:`HostilePeer._broken`); each kind of answer adds its own.
_BROKEN = ("garbage", "truncated", "oversized")


def _bytes_or_message(answer: Any) -> bytes:
    """Response serializer that passes a hostile answer's raw bytes through unchanged."""
    return answer if isinstance(answer, bytes) else bytes(answer.SerializeToString())


def add_gateway_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """Register the Gateway service as the generated code does, but able to send raw (hostile) bytes."""
    g = gateway_pb2
    methods: dict[str, grpc.RpcMethodHandler] = {
        "Endorse": grpc.unary_unary_rpc_method_handler(
            servicer.Endorse, g.EndorseRequest.FromString, _bytes_or_message),
        "Submit": grpc.unary_unary_rpc_method_handler(
            servicer.Submit, g.SubmitRequest.FromString, _bytes_or_message),
        "CommitStatus": grpc.unary_unary_rpc_method_handler(
            servicer.CommitStatus, g.SignedCommitStatusRequest.FromString, _bytes_or_message),
        "Evaluate": grpc.unary_unary_rpc_method_handler(
            servicer.Evaluate, g.EvaluateRequest.FromString, _bytes_or_message),
        "ChaincodeEvents": grpc.unary_stream_rpc_method_handler(
            servicer.ChaincodeEvents, g.SignedChaincodeEventsRequest.FromString, _bytes_or_message),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("gateway.Gateway", methods),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.63: no per-call method lookup
        server.add_registered_method_handlers("gateway.Gateway", methods)


class HostilePeer:
    """Makes hostile answers from honest ones; counts what it sent by kind (``counts``)."""

    def __init__(self, rng: random.Random, counters: Any) -> None:
        self.rng = rng
        self.counters = counters

    def _count(self, what: str) -> None:
        self.counters[f"hostile_{what}"] += 1
        self.counters["hostile"] += 1

    def _garbage(self) -> bytes:
        return os.urandom(self.rng.randint(0, 64))

    def _truncated(self, data: bytes) -> bytes:
        return data[: self.rng.randint(0, max(0, len(data) - 1))]

    def _padded(self, data: bytes) -> bytes:
        size = self.rng.randint(*_PAD_RANGE)
        # field 2047, length-delimited: an unknown field every parser must skip
        return data + b"\xfa\x7f" + _varint(size) + b"\x00" * size

    def _pick(self, answer: str, data: bytes, *own: str) -> tuple[str, bytes | None]:
        """Choose how to lie in an ``answer`` (a way of :data:`_BROKEN` or one of its ``own``) and count
        it: (the kind, ``data`` broken that way, or None for an own kind the caller makes)."""
        kind = self.rng.choice((*_BROKEN, *own))
        self._count(f"{answer}_{kind}")
        return kind, self._broken(kind, data)

    def _broken(self, kind: str, data: bytes) -> bytes | None:
        """``data`` broken the ways every answer can be (garbage, truncated, oversized); None for
        another kind, which the caller makes itself."""
        if kind == "garbage":
            return self._garbage()
        if kind == "truncated":
            return self._truncated(data)
        if kind == "oversized":
            return self._padded(data)
        return None

    # -- unary answers ----------------------------------------------------------------------

    def commit_status(self, honest: gateway_pb2.CommitStatusResponse) -> bytes:
        kind, broken = self._pick("commit_status", honest.SerializeToString(), "block0", "block_max")
        if broken is not None:
            return broken
        block = 0 if kind == "block0" else 2**64 - 1
        return bytes(
            gateway_pb2.CommitStatusResponse(result=honest.result, block_number=block).SerializeToString()
        )

    def evaluate(self, honest: gateway_pb2.EvaluateResponse) -> bytes:
        _, broken = self._pick("evaluate", honest.SerializeToString())
        assert broken is not None
        return broken

    def endorse(self, honest: gateway_pb2.EndorseResponse) -> bytes:
        kind, broken = self._pick("endorse", honest.SerializeToString(), "other_tx", "empty")
        if broken is not None:
            return broken
        if kind == "empty":
            return b""
        # a prepared transaction whose channel header names another tx id (contradicts the proposal)
        payload = common_pb2.Payload.FromString(honest.prepared_transaction.payload)
        ch = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        ch.tx_id = os.urandom(32).hex()
        payload.header.channel_header = ch.SerializeToString()
        env = common_pb2.Envelope(payload=payload.SerializeToString())
        return bytes(gateway_pb2.EndorseResponse(prepared_transaction=env).SerializeToString())

    # -- the block stream -------------------------------------------------------------------

    def block(self, honest: bytes, number: int, channel: str) -> tuple[list[bytes], bool]:
        """What to send instead of block ``number``: (messages, whether the honest block follows them).
        A message that breaks the stream (garbage, a jump, a status) ends the client's stream: the
        honest block is then sent again on its next seek."""
        kind, broken = self._pick("deliver", honest,
                                  "jump", "backwards", "duplicates", "unknown_codes", "status")
        if broken is not None:
            return [broken], False  # an oversized (padded) block is the block
        if kind == "status":
            status = self.rng.choice((400, 403, 404, 500, 503, 777))
            return [events_pb2.DeliverResponse(status=status).SerializeToString()], False
        fb = events_pb2.DeliverResponse.FromString(honest).filtered_block
        if kind == "jump":
            return [_block(fb, number + self.rng.randint(1, 5), _entries(fb))], False
        if kind == "backwards":
            if number < 1:
                return [], True
            made_up = [(t, self.rng.choice((0, 11, 4242))) for t, _ in _entries(fb)]
            return [_block(fb, self.rng.randint(0, number - 1), made_up)], True  # then the real one
        entries = _entries(fb)
        if kind == "duplicates":
            lying: list[tuple[str, int]] = []
            for t, c in entries:
                # a second, contradictory outcome for the same tx id (VALID <-> MVCC_READ_CONFLICT),
                # sometimes before the real one
                pair = [(t, c), (t, transaction_pb2.MVCC_READ_CONFLICT if c == 0 else transaction_pb2.VALID)]
                lying += pair if self.rng.random() < 0.5 else pair[::-1]
        else:  # unknown_codes: made-up tx ids with unknown codes, and real ones listed again with one
            lying = list(entries)
            n_made_up = self.rng.randint(1, 5)
            lying += [(os.urandom(32).hex(), self.rng.choice(_UNKNOWN_CODES)) for _ in range(n_made_up)]
            lying += [(t, self.rng.choice(_UNKNOWN_CODES)) for t, _ in entries[:3]]
        return [_block(fb, number, lying)], False  # the lying block takes the real one's place


def _entries(fb: events_pb2.FilteredBlock) -> list[tuple[str, int]]:
    return [(t.txid, int(t.tx_validation_code)) for t in fb.filtered_transactions]


def _block(fb: events_pb2.FilteredBlock, number: int, entries: list[tuple[str, int]]) -> bytes:
    out = events_pb2.FilteredBlock(channel_id=fb.channel_id, number=number)
    for txid, code in entries:
        out.filtered_transactions.add(
            txid=txid, type=common_pb2.ENDORSER_TRANSACTION, tx_validation_code=code
        )
    return bytes(events_pb2.DeliverResponse(filtered_block=out).SerializeToString())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)

