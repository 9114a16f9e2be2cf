"""The seek envelope that opens a block stream, and the commit watcher's rules (no I/O: blocks are fed
to the watcher directly; the stream itself is tested against the emulator in tests/integration)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.common import common_pb2
from fabric_protos.orderer import ab_pb2

from gxsubmit.fabric.client import FilteredBlock
from gxsubmit.fabric.codes import DUPLICATE_TXID, MVCC_READ_CONFLICT
from gxsubmit.fabric.commits import CommitWatcher
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import seek_envelope
from gxsubmit.wallet import load_identity

TS = datetime(2026, 11, 29, 12, 0, 0, 500000, tzinfo=UTC)


def _ident(wallet: Path) -> SigningIdentity:
    wi = load_identity(wallet, "org1-admin", msp_id="Org1MSP", expected_role="gx_admin")
    return SigningIdentity.from_wallet(wi)


def _parts(
    env: common_pb2.Envelope,
) -> tuple[common_pb2.ChannelHeader, common_pb2.SignatureHeader, ab_pb2.SeekInfo]:
    payload = common_pb2.Payload.FromString(env.payload)
    ch = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    sh = common_pb2.SignatureHeader.FromString(payload.header.signature_header)
    return ch, sh, ab_pb2.SeekInfo.FromString(payload.data)


def test_seek_envelope_newest_first_and_never_stops(wallet: Path) -> None:
    ident = _ident(wallet)
    env = seek_envelope(ident, channel="gxchannel", start_block=None, timestamp=TS)
    ch, sh, seek = _parts(env)
    assert ch.type == common_pb2.DELIVER_SEEK_INFO
    assert ch.channel_id == "gxchannel"
    assert (ch.timestamp.seconds, ch.timestamp.nanos) == (int(TS.timestamp()), 500000000)
    assert ch.tx_id == "" and not ch.tls_cert_hash  # the official clients send neither
    assert sh.creator == ident.creator and sh.nonce == b""
    assert seek.start.WhichOneof("Type") == "newest"
    assert seek.stop.WhichOneof("Type") == "specified" and seek.stop.specified.number == 2**64 - 1
    assert seek.behavior == ab_pb2.SeekInfo.BLOCK_UNTIL_READY
    # signed by the identity over SHA-256(payload), as the peer checks it
    pub = x509.load_pem_x509_certificate(ident.cert_pem).public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(env.signature, env.payload, ec.ECDSA(hashes.SHA256()))


def test_seek_envelope_resumes_at_a_block_with_tls_binding(wallet: Path) -> None:
    ident = _ident(wallet)
    digest = hashlib.sha256(b"cert").digest()
    ch, _, seek = _parts(seek_envelope(ident, channel="c", start_block=41, tls_cert_hash=digest))
    assert seek.start.specified.number == 41
    assert ch.tls_cert_hash == digest
    with pytest.raises(ValueError):
        seek_envelope(ident, channel="c", start_block=-1)


class _NoClient:
    """The watcher is driven by hand here; it must never touch the client."""


def _watcher(states: list[bool]) -> CommitWatcher:
    return CommitWatcher(_NoClient(), lambda: None, "c", on_state=states.append)  # type: ignore[arg-type, return-value]  # fakes: no client, no signer


async def test_only_a_live_stream_takes_waits() -> None:
    states: list[bool] = []
    w = _watcher(states)
    assert w.expect("t1") is None  # no block seen yet: the caller asks CommitStatus
    w._on_block(7, ())
    assert w.live and states == [True] and w.next_block == 8
    fut = w.expect("t1")
    assert fut is not None and not fut.done()
    w._on_block(8, (("other", 0), ("t1", 0)))
    res = fut.result()
    assert res is not None and (res.tx_id, res.block_number, res.code, res.valid) == ("t1", 8, 0, True)
    assert w.waiting == 0


async def test_invalid_codes_are_answers_but_a_duplicate_is_not() -> None:
    w = _watcher([])
    w._on_block(1, ())
    mvcc, dup = w.expect("a"), w.expect("b")
    assert mvcc is not None and dup is not None
    w._on_block(2, (("a", MVCC_READ_CONFLICT), ("b", DUPLICATE_TXID)))
    res = mvcc.result()
    assert res is not None and res.code_name == "MVCC_READ_CONFLICT" and not res.valid
    assert dup.result() is None  # a later copy: CommitStatus reports the first one


async def test_losing_the_stream_sends_every_wait_to_commit_status() -> None:
    states: list[bool] = []
    w = _watcher(states)
    w._on_block(3, ())
    futs = [w.expect(f"t{i}") for i in range(5)]
    w._down()
    assert states == [True, False] and not w.live
    assert all(f is not None and f.done() and f.result() is None for f in futs)
    assert w.expect("t9") is None  # until a block arrives again
    assert w.next_block == 4  # and the reconnect resumes right after the last block seen


async def test_forget_drops_a_wait() -> None:
    w = _watcher([])
    w._on_block(1, ())
    fut = w.expect("t")
    assert fut is not None
    w.forget("t")
    assert fut.cancelled() and w.waiting == 0
    w._on_block(2, (("t", 0),))  # a late block for it is ignored


async def test_a_cancelled_wait_does_not_break_the_next_block() -> None:
    w = _watcher([])
    w._on_block(1, ())
    fut = w.expect("slow")
    assert fut is not None
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fut, 0.001)  # e.g. the job was cancelled at shutdown
    w._on_block(2, (("slow", 0),))  # the cancelled future is skipped, not set
    assert fut.cancelled()


async def test_overdue_waits_go_to_commit_status() -> None:
    w = CommitWatcher(_NoClient(), lambda: None, "c", timeout_s=60.0)  # type: ignore[arg-type, return-value]  # fakes: no client, no signer
    w._on_block(1, ())
    t0 = time.monotonic()
    early, late = w.expect("early"), None
    assert early is not None
    w._deadlines[0] = (t0 + 10.0, "early", early)  # registered "earlier": due first
    late = w.expect("late")
    assert late is not None
    w.expire(t0 + 30.0)
    assert early.result() is None and not late.done()  # only the overdue one is answered
    assert w.waiting == 1
    w._on_block(2, (("late", 0),))
    res = late.result()
    assert res is not None and res.valid
    w.expire(t0 + 1000.0)  # answered waits are just dropped from the deadline queue
    assert not w._deadlines


class _FlakyClient:
    """A stand-in for GatewayClient.filtered_blocks: first a stream that breaks with an unexpected error
    after one block, then one that works; records where each seek started."""

    def __init__(self) -> None:
        self.starts: list[int | None] = []

    async def filtered_blocks(
        self, identity: object, *, channel: str, start_block: int | None, tls_cert_hash: bytes | None = None
    ) -> AsyncIterator[FilteredBlock]:
        self.starts.append(start_block)
        if len(self.starts) == 1:
            yield FilteredBlock(5, ())
            raise RuntimeError("a bug in a deserializer")
        yield FilteredBlock(start_block or 0, (("t", 0),))
        await asyncio.Event().wait()  # then nothing more until cancelled


async def test_an_unexpected_error_does_not_kill_the_watcher() -> None:
    client = _FlakyClient()
    states: list[bool] = []
    w = CommitWatcher(client, lambda: None, "c", on_state=states.append)  # type: ignore[arg-type, return-value]  # fakes: no client, no signer
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    deadline = time.monotonic() + 5
    while len(client.starts) < 2 or w.next_block != 7:
        assert time.monotonic() < deadline, (client.starts, w.next_block)
        await asyncio.sleep(0.01)
    # it went down (waits to CommitStatus), came back and resumed right after the last block seen
    assert client.starts == [None, 6] and states == [True, False, True] and w.live
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not w.live and states[-1] is False
