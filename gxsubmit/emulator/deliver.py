"""What the peer's Deliver service decides about a seek request, and the filtered blocks it sends.

The seek checks follow hyperledger/fabric 2.5 ``common/deliver`` (``deliverBlocks``, session access
control) with the peer's ``DeliverFiltered`` policy (channel Readers): every refusal is a
``DeliverResponse{status}``, never a gRPC error. The stream loop itself lives in ``server.py``.

Mutual TLS binding (``ChannelHeader.tls_cert_hash``) is checked when the emulator requires client
certificates (``client_tls``); without mutual TLS a peer does not check it either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import repeat

from fabric_protos.common import common_pb2
from fabric_protos.orderer import ab_pb2
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from gxsubmit.emulator import wire
from gxsubmit.emulator.ledger import Ledger
from gxsubmit.emulator.validation import Creator, CreatorInvalid, IdentityRegistry, verify_signature

__all__ = [
    "DEFAULT_TIME_WINDOW_S",
    "FilteredBlocks",
    "Seek",
    "genesis_tx_id",
    "parse_seek",
]

#: peer.authentication.timewindow; Fabric 2.5 applies it to deliver requests whatever the auth filters.
DEFAULT_TIME_WINDOW_S = 900.0

SUCCESS: int = common_pb2.SUCCESS
BAD_REQUEST: int = common_pb2.BAD_REQUEST
FORBIDDEN: int = common_pb2.FORBIDDEN
NOT_FOUND: int = common_pb2.NOT_FOUND

_ENDORSER: int = common_pb2.ENDORSER_TRANSACTION
_CONFIG: int = common_pb2.CONFIG


def genesis_tx_id(channel: str) -> str:
    """The tx id of block 0's single CONFIG transaction: fixed per channel, so stable across restarts.

    (configtxgen derives it from a random nonce; the emulator has no genesis block file to keep.)
    """
    return hashlib.sha256(b"gxsubmit-emulator genesis " + channel.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Seek:
    """An accepted seek: send blocks ``start``, ``start + 1``, ... until ``stop`` has been sent.

    ``stop`` is compared for equality after each block as Fabric does, so a stop below the start
    (``newest`` stop with a ``next_commit`` start) never ends the seek. ``not_found``: the start is
    beyond the ledger; the peer answers NOT_FOUND when it tries to read it.
    """

    start: int
    stop: int
    fail_if_not_ready: bool
    not_found: bool
    creator: Creator


def parse_seek(
    env: common_pb2.Envelope,
    *,
    registry: IdentityRegistry,
    channel: str,
    height: int,
    now: float,
    time_window_s: float,
    tls_cert_hash: bytes | None = None,
) -> Seek | int:
    """The Seek to serve, or the ``common.Status`` value to answer with (which ends the stream).

    ``tls_cert_hash``: with mutual TLS, the hash of the session's client certificate; the seek must carry
    the same in its channel header (Fabric's binding inspector, part of parsing the envelope: a missing or
    different hash is BAD_REQUEST). None: no mutual TLS, no binding to check.
    """
    try:
        payload = common_pb2.Payload.FromString(env.payload)
        if not payload.HasField("header"):
            return BAD_REQUEST
        chdr = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
        shdr = common_pb2.SignatureHeader.FromString(payload.header.signature_header)
    except DecodeError:
        return BAD_REQUEST
    if not chdr.HasField("timestamp"):
        return BAD_REQUEST
    sent = chdr.timestamp.seconds + chdr.timestamp.nanos / 1e9
    if abs(now - sent) > time_window_s:
        return BAD_REQUEST
    if tls_cert_hash is not None and (not tls_cert_hash or chdr.tls_cert_hash != tls_cert_hash):
        return BAD_REQUEST
    if chdr.channel_id != channel:
        return NOT_FOUND
    try:
        info = ab_pb2.SeekInfo.FromString(payload.data)
    except DecodeError:
        return BAD_REQUEST
    # Session access control: identity expiry, then the Readers policy (a member's valid signature).
    try:
        creator = registry.resolve(shdr.creator)
    except CreatorInvalid:
        return FORBIDDEN
    if creator.expired(now) or not verify_signature(creator.public_key, env.payload, env.signature):
        return FORBIDDEN
    if not info.HasField("start") or not info.HasField("stop"):
        return BAD_REQUEST
    not_found = False
    kind = info.start.WhichOneof("Type")
    if kind == "oldest":
        number = 0
    elif kind == "newest":
        number = height - 1
    elif kind == "specified":
        number = int(info.start.specified.number)
        if number > height:
            not_found, number = True, 0
    elif kind == "next_commit":
        number = height
    else:
        not_found, number = True, 0
    stop_kind = info.stop.WhichOneof("Type")
    if stop_kind == "oldest":
        stop = number
    elif stop_kind == "newest":
        stop = number if info.start == info.stop else height - 1
    elif stop_kind == "specified":
        stop = int(info.stop.specified.number)
        if stop < number:
            return BAD_REQUEST
    else:
        stop = 0  # Go's zero value: an unset stop type
    return Seek(
        start=number,
        stop=stop,
        fail_if_not_ready=info.behavior == ab_pb2.SeekInfo.FAIL_IF_NOT_READY,
        not_found=not_found,
        creator=creator,
    )


class FilteredBlocks:
    """Serialized ``DeliverResponse{filtered_block}`` per block, built once and shared by all streams.

    Only blocks near the head are kept (streams that follow the chain all want the same few); an old
    block replayed by a catching-up stream is built again for each such stream.
    """

    def __init__(self, ledger: Ledger, channel: str, *, keep: int = 64) -> None:
        self._ledger = ledger
        self._channel = channel
        self._keep = keep
        self._cache: dict[int, bytes] = {}
        self._genesis_id = genesis_tx_id(channel)

    def get(self, number: int) -> bytes:
        hit = self._cache.get(number)
        if hit is not None:
            return hit
        data = self._build(number)
        if number >= self._ledger.height - self._keep:
            cache = self._cache
            cache[number] = data
            if len(cache) > self._keep:
                floor = self._ledger.height - self._keep
                for old in [n for n in cache if n < floor]:
                    del cache[old]
        return data

    def _build(self, number: int) -> bytes:
        if number == 0:
            return wire.filtered_block_response(self._channel, 0, [(self._genesis_id, _CONFIG, 0, None)])
        txs = self._ledger.blocks[number]
        rows = zip(txs.tx_ids, repeat(_ENDORSER), txs.codes, txs.events)
        return wire.filtered_block_response(self._channel, number, rows)
