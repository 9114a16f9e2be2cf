"""The emulator's peer Deliver service (DeliverFiltered) over real gRPC, as a Fabric 2.5 peer serves it.

Seek envelopes are built and signed here with gxsubmit.fabric.identity.SigningIdentity; transactions
are submitted with the raw Gateway client of test_emulator_support.
"""

from __future__ import annotations

import hashlib
import queue
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from fabric_protos.common import common_pb2
from fabric_protos.orderer import ab_pb2
from fabric_protos.peer import events_pb2, events_pb2_grpc, transaction_pb2
from test_emulator_support import Failure, RawGateway, RawIdentity, build_proposal, expired_cert_pems, signed
from waiting import wait_for

from gxsubmit.devwallet import issue_identity, new_ca
from gxsubmit.emulator import Emulator
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import compute_tx_id, new_nonce
from gxsubmit.wallet import load_identity

TX = transaction_pb2.TxValidationCode
MAX_BLOCK = 2**64 - 1
FOREVER = ("specified", MAX_BLOCK)
BLOCK_UNTIL_READY = ab_pb2.SeekInfo.BLOCK_UNTIL_READY
FAIL_IF_NOT_READY = ab_pb2.SeekInfo.FAIL_IF_NOT_READY
Position = tuple[str, int] | str | None


# ---------------------------------------------------------------------------------------------
# Seek envelopes and a bidirectional stream


def signing_identity(wallet: Path, name: str = "org1-partner-api") -> SigningIdentity:
    return SigningIdentity.from_wallet(load_identity(wallet, name, msp_id="Org1MSP", expected_role=None))


def _position(pos: Position) -> ab_pb2.SeekPosition:
    out = ab_pb2.SeekPosition()
    if isinstance(pos, tuple):
        out.specified.number = pos[1]
    elif pos is not None:
        getattr(out, pos).SetInParent()  # newest | oldest | next_commit
    return out


def seek_envelope(
    identity: SigningIdentity,
    start: Position,
    stop: Position = FOREVER,
    *,
    behavior: int = BLOCK_UNTIL_READY,
    channel: str = "gxchannel",
    timestamp: datetime | None = None,
    signer: SigningIdentity | None = None,
    with_nonce: bool = True,
) -> common_pb2.Envelope:
    """A signed DELIVER_SEEK_INFO envelope.

    With a nonce and tx id as the Go SDK sends it; the Node client leaves both out (``with_nonce=False``).
    """
    ts = timestamp or datetime.now(UTC)
    chdr = common_pb2.ChannelHeader(type=common_pb2.DELIVER_SEEK_INFO, channel_id=channel, epoch=0)
    chdr.timestamp.FromDatetime(ts)
    shdr = common_pb2.SignatureHeader(creator=identity.creator)
    if with_nonce:
        shdr.nonce = new_nonce()
        chdr.tx_id = compute_tx_id(shdr.nonce, identity.creator)
    info = ab_pb2.SeekInfo(behavior=behavior)
    if start is not None:
        info.start.CopyFrom(_position(start))
    if stop is not None:
        info.stop.CopyFrom(_position(stop))
    payload = common_pb2.Payload(
        header=common_pb2.Header(
            channel_header=chdr.SerializeToString(), signature_header=shdr.SerializeToString()
        ),
        data=info.SerializeToString(),
    ).SerializeToString()
    return common_pb2.Envelope(payload=payload, signature=(signer or identity).sign(payload))


class DeliverStream:
    """One DeliverFiltered call: ``send`` seeks, ``close_send`` half-closes, ``next`` reads a response."""

    def __init__(self, channel: grpc.Channel, *, raw: bool = False, timeout: float = 20.0) -> None:
        self._requests: queue.Queue[common_pb2.Envelope | None] = queue.Queue()
        if raw:  # the undecoded response bytes
            method = channel.stream_stream(
                "/protos.Deliver/DeliverFiltered",
                request_serializer=common_pb2.Envelope.SerializeToString,
                response_deserializer=None,
            )
            self.call = method(iter(self._requests.get, None), timeout=timeout)
        else:
            stub = events_pb2_grpc.DeliverStub(channel)
            self.call = stub.DeliverFiltered(iter(self._requests.get, None), timeout=timeout)

    def send(self, env: common_pb2.Envelope) -> DeliverStream:
        self._requests.put(env)
        return self

    def close_send(self) -> None:
        self._requests.put(None)

    def next(self) -> Any:
        return next(self.call)

    def blocks_until_status(self) -> tuple[list[events_pb2.FilteredBlock], int]:
        blocks: list[events_pb2.FilteredBlock] = []
        while True:
            resp = self.next()
            if resp.WhichOneof("Type") == "status":
                return blocks, resp.status
            assert resp.WhichOneof("Type") == "filtered_block", resp
            blocks.append(resp.filtered_block)

    def ended(self) -> bool:
        """True if the server finished the call with gRPC OK and nothing more to read."""
        try:
            extra = self.next()
        except StopIteration:
            return bool(self.call.code() == grpc.StatusCode.OK)
        raise AssertionError(f"unexpected response {extra}")

    def cancel(self) -> None:
        self.close_send()
        self.call.cancel()


@pytest.fixture
def open_stream() -> Iterator[Callable[..., DeliverStream]]:
    streams: list[DeliverStream] = []

    def open_(gw: RawGateway, **kw: Any) -> DeliverStream:
        s = DeliverStream(gw.channel, **kw)
        streams.append(s)
        return s

    yield open_
    for s in streams:
        s.cancel()


def me(wallet: Path) -> RawIdentity:
    return RawIdentity.from_wallet(wallet, "org1-partner-api")


def create_user(gw: RawGateway, wallet: Path, user: str) -> tuple[str, Any]:
    return gw.run(me(wallet), "IdentityContract:CreateUser", [user, "ab" * 32, "NG", "30"])


def txs_of(block: events_pb2.FilteredBlock) -> list[tuple[str, int]]:
    return [(t.txid, t.tx_validation_code) for t in block.filtered_transactions]


def event_names(tx: events_pb2.FilteredTransaction) -> list[str]:
    return [a.chaincode_event.event_name for a in tx.transaction_actions.chaincode_actions]


# ---------------------------------------------------------------------------------------------


def test_newest_and_next_commit_streams_receive_the_new_block(
    start_emulator: Any, open_stream: Any, wallet: Path
) -> None:
    emu, gw = start_emulator()
    first, st = create_user(gw, wallet, "dlv-a")
    assert st.result == TX.VALID
    ident = signing_identity(wallet)
    newest = open_stream(gw).send(seek_envelope(ident, "newest"))
    head = newest.next().filtered_block
    assert head.number == st.block_number and txs_of(head) == [(first, TX.VALID)]
    # next_commit starts at the height: nothing until the next block. The counter says the seek
    # was read (its start fixed) before the transaction is submitted.
    follower = open_stream(gw).send(seek_envelope(ident, "next_commit", with_nonce=False))
    wait_for(lambda: emu.stats()["deliver_seeks"] == 2, timeout=10)

    tx_id, st2 = create_user(gw, wallet, "dlv-b")
    assert st2.result == TX.VALID
    for stream in (newest, follower):
        resp = stream.next()
        assert resp.WhichOneof("Type") == "filtered_block"
        block = resp.filtered_block
        assert block.channel_id == "gxchannel" and block.number == st2.block_number
        (tx,) = block.filtered_transactions
        assert tx.txid == tx_id and tx.tx_validation_code == TX.VALID
        assert tx.type == common_pb2.ENDORSER_TRANSACTION
        (action,) = tx.transaction_actions.chaincode_actions
        ev = action.chaincode_event
        assert (ev.chaincode_id, ev.tx_id, ev.event_name, ev.payload) == ("gxtv3", tx_id, "UserCreated", b"")


def test_specified_start_replays_every_transaction_then_next_seek_on_the_same_stream(
    start_emulator: Any, open_stream: Any, wallet: Path
) -> None:
    emu, gw = start_emulator(block_size=2, block_time=30)
    who = me(wallet)
    p = build_proposal(who, "IdentityContract:CreateUser", ["dlv-dup", "ab" * 32, "NG", "30"])
    env = signed(gw.endorse(p), who)
    assert not isinstance(gw.submit(p.tx_id, env), Failure)
    assert not isinstance(gw.submit(p.tx_id, env), Failure)  # second copy, same block
    dup_block = gw.commit_status(who, p.tx_id).block_number
    emu._core.block_size = 1
    emu.faults.mvcc = 1.0
    mvcc_tx, st = create_user(gw, wallet, "dlv-mvcc")
    emu.faults.mvcc = 0.0
    assert st.result == TX.MVCC_READ_CONFLICT
    height = emu.stats()["height"]
    assert height == st.block_number + 1

    ident = signing_identity(wallet)
    stream = open_stream(gw, raw=True)
    stream.send(seek_envelope(ident, ("specified", dup_block), "newest"))
    raws = [stream.next() for _ in range(height - dup_block + 1)]
    resps = [events_pb2.DeliverResponse.FromString(r) for r in raws]
    assert [r.SerializeToString() for r in resps] == raws  # canonical protobuf encoding
    assert resps[-1].WhichOneof("Type") == "status" and resps[-1].status == common_pb2.SUCCESS
    blocks = [r.filtered_block for r in resps[:-1]]
    assert [b.number for b in blocks] == list(range(dup_block, height))
    assert txs_of(blocks[0]) == [(p.tx_id, TX.VALID), (p.tx_id, TX.DUPLICATE_TXID)]
    assert txs_of(blocks[-1]) == [(mvcc_tx, TX.MVCC_READ_CONFLICT)]
    # The filtered block is made from the envelopes: an invalid transaction still shows its event.
    assert [event_names(t) for t in blocks[0].filtered_transactions] == [["UserCreated"], ["UserCreated"]]

    # A second seek on the same stream: the genesis block alone (oldest..oldest).
    stream.send(seek_envelope(ident, "oldest", "oldest"))
    genesis = events_pb2.DeliverResponse.FromString(stream.next()).filtered_block
    assert genesis.number == 0 and genesis.channel_id == "gxchannel"
    (cfg,) = genesis.filtered_transactions
    assert cfg.type == common_pb2.CONFIG and cfg.tx_validation_code == TX.VALID
    assert len(cfg.txid) == 64 and not cfg.HasField("transaction_actions")
    done = events_pb2.DeliverResponse.FromString(stream.next())
    assert done.status == common_pb2.SUCCESS
    stream.close_send()  # half-close after SUCCESS: the RPC ends cleanly
    assert stream.ended()


def test_fail_if_not_ready_sends_what_exists_then_not_found(
    start_emulator: Any, open_stream: Any, wallet: Path
) -> None:
    emu, gw = start_emulator()
    create_user(gw, wallet, "dlv-ready")
    height = emu.stats()["height"]
    ident = signing_identity(wallet)
    stream = open_stream(gw).send(seek_envelope(ident, "oldest", behavior=FAIL_IF_NOT_READY))
    blocks, status = stream.blocks_until_status()
    assert [b.number for b in blocks] == list(range(height)) and status == common_pb2.NOT_FOUND
    assert stream.ended()  # a status other than SUCCESS ends the call (gRPC OK)
    beyond = open_stream(gw).send(seek_envelope(ident, ("specified", height), behavior=FAIL_IF_NOT_READY))
    assert beyond.blocks_until_status() == ([], common_pb2.NOT_FOUND)
    assert beyond.ended()


def _expired(wallet: Path) -> SigningIdentity:
    return signing_identity_from_pems(*expired_cert_pems(wallet))


def signing_identity_from_pems(cert: bytes, key: bytes) -> SigningIdentity:
    raw = RawIdentity.from_pems(cert, key)
    return SigningIdentity(msp_id="Org1MSP", cert_pem=raw.cert_pem, private_key=raw.key)


def _foreign() -> SigningIdentity:
    return signing_identity_from_pems(
        *issue_identity(new_ca("ca.evil.example.com"), "mallory", "gx_partner_api")
    )


def _refusal_cases(wallet: Path) -> dict[str, tuple[common_pb2.Envelope, int]]:
    ident = signing_identity(wallet)
    other = signing_identity(wallet, "org1-admin")
    garbage = common_pb2.Envelope(payload=b"\xff\xff\xff", signature=ident.sign(b"\xff\xff\xff"))
    unsigned = seek_envelope(ident, "newest")
    unsigned.signature = b""
    return {
        "beyond height": (seek_envelope(ident, ("specified", 1000)), common_pb2.NOT_FOUND),
        "bad signature": (seek_envelope(ident, "newest", signer=other), common_pb2.FORBIDDEN),
        "no signature": (unsigned, common_pb2.FORBIDDEN),
        "expired identity": (seek_envelope(_expired(wallet), "newest"), common_pb2.FORBIDDEN),
        "unknown CA": (seek_envelope(_foreign(), "newest"), common_pb2.FORBIDDEN),
        "unknown channel": (seek_envelope(ident, "newest", channel="nochannel"), common_pb2.NOT_FOUND),
        "old timestamp": (
            seek_envelope(ident, "newest", timestamp=datetime.now(UTC) - timedelta(minutes=16)),
            common_pb2.BAD_REQUEST,
        ),
        "future timestamp": (
            seek_envelope(ident, "newest", timestamp=datetime.now(UTC) + timedelta(minutes=16)),
            common_pb2.BAD_REQUEST,
        ),
        "stop before start": (
            seek_envelope(ident, ("specified", 1), ("specified", 0)),
            common_pb2.BAD_REQUEST,
        ),
        "no stop": (seek_envelope(ident, "newest", None), common_pb2.BAD_REQUEST),
        "garbage payload": (garbage, common_pb2.BAD_REQUEST),
    }


def test_refused_seeks_get_the_peer_status_and_end_the_call(
    start_emulator: Any, open_stream: Any, wallet: Path
) -> None:
    emu, gw = start_emulator()
    create_user(gw, wallet, "dlv-refuse")
    cases = _refusal_cases(wallet)
    streams = {name: open_stream(gw).send(env) for name, (env, _) in cases.items()}
    got = {name: s.blocks_until_status() for name, s in streams.items()}
    assert got == {name: ([], status) for name, (_, status) in cases.items()}
    assert all(s.ended() for s in streams.values())
    assert emu.stats()["deliver_seeks"] == 1  # only "beyond height" got past the checks


def test_time_window_follows_the_emulator_setting(
    start_emulator: Any, open_stream: Any, wallet: Path
) -> None:
    _emu, gw = start_emulator(time_window_s=60)
    ident = signing_identity(wallet)
    late = datetime.now(UTC) - timedelta(minutes=2)
    stream = open_stream(gw).send(seek_envelope(ident, "oldest", "oldest", timestamp=late))
    assert stream.blocks_until_status() == ([], common_pb2.BAD_REQUEST)


def test_outage_fails_the_stream_with_unavailable(
    start_emulator: Any, open_stream: Any, wallet: Path
) -> None:
    emu, gw = start_emulator()
    ident = signing_identity(wallet)
    stream = open_stream(gw).send(seek_envelope(ident, "newest"))
    assert stream.next().filtered_block.number == 0
    emu.faults.outage(600)
    with pytest.raises(grpc.RpcError) as exc:
        stream.next()
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as exc2:  # a new stream during the outage
        open_stream(gw).send(seek_envelope(ident, "newest")).next()
    assert exc2.value.code() == grpc.StatusCode.UNAVAILABLE
    emu.faults.outage_until = 0.0
    again = open_stream(gw).send(seek_envelope(ident, "newest", "newest"))
    assert [b.number for b in again.blocks_until_status()[0]] == [0]


def test_restarted_emulator_serves_the_same_old_blocks(tmp_path: Path, wallet: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    ident = signing_identity(wallet)

    def all_blocks(emu: Emulator) -> tuple[list[bytes], int]:
        ch = grpc.insecure_channel(f"127.0.0.1:{emu.port}")
        try:
            stream = DeliverStream(ch, raw=True)
            stream.send(seek_envelope(ident, "oldest", "newest"))
            height = emu.stats()["height"]
            out = [stream.next() for _ in range(height)]
            status = events_pb2.DeliverResponse.FromString(stream.next()).status
            stream.cancel()
            return out, status
        finally:
            ch.close()

    emu = Emulator(wallet=wallet, ledger=ledger, block_time=0.05)
    gw = RawGateway(emu.start())
    try:
        emu.faults.policy_failure = 1.0
        _, bad = create_user(gw, wallet, "dlv-policy")
        emu.faults.policy_failure = 0.0
        assert bad.result == TX.ENDORSEMENT_POLICY_FAILURE
        create_user(gw, wallet, "dlv-keep")
        before, status = all_blocks(emu)
    finally:
        gw.close()
        emu.stop()
    assert status == common_pb2.SUCCESS and len(before) == 3

    emu2 = Emulator(wallet=wallet, ledger=ledger, block_time=0.05)
    emu2.start()
    try:
        after, status2 = all_blocks(emu2)
    finally:
        emu2.stop()
    assert status2 == common_pb2.SUCCESS
    assert after == before
    codes = [
        [
            t.tx_validation_code
            for t in events_pb2.DeliverResponse.FromString(b).filtered_block.filtered_transactions
        ]
        for b in after
    ]
    assert codes == [[TX.VALID], [TX.ENDORSEMENT_POLICY_FAILURE], [TX.VALID]]
    genesis = events_pb2.DeliverResponse.FromString(after[0]).filtered_block.filtered_transactions[0]
    assert genesis.txid == hashlib.sha256(b"gxsubmit-emulator genesis gxchannel").hexdigest()


def test_deliver_and_private_data_variants_are_unimplemented(start_emulator: Any, wallet: Path) -> None:
    _emu, gw = start_emulator()
    stub = events_pb2_grpc.DeliverStub(gw.channel)
    env = seek_envelope(signing_identity(wallet), "oldest", "oldest")
    for method in (stub.Deliver, stub.DeliverWithPrivateData):
        with pytest.raises(grpc.RpcError) as exc:
            next(method(iter([env]), timeout=10))
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- mutual TLS: seeks bound to the client certificate -------------------------------------------


async def test_mutual_tls_seek_must_carry_the_client_certificate_hash(tmp_path: Path, wallet: Path) -> None:
    """With client certificates required, a seek whose tls_cert_hash is missing or names another
    certificate is BAD_REQUEST (Fabric's binding inspector); the right hash gets blocks."""
    from gxsubmit.fabric.client import GatewayClient
    from gxsubmit.fabric.commits import tls_cert_hash
    from gxsubmit.fabric.errors import FabricError
    from gxsubmit.wallet import load_tls_client

    emu = Emulator(wallet=wallet, ledger=tmp_path / "mtls.jsonl", insecure=False, client_tls=True)
    port = emu.start()
    pair = load_tls_client(wallet)
    assert pair is not None
    cert, key = pair
    client = GatewayClient(
        target=f"127.0.0.1:{port}",
        tls_root=(wallet / "tlsca-cert").read_bytes(),
        client_cert=cert,
        client_key=key,
    )
    me = SigningIdentity.from_wallet(
        load_identity(wallet, "org1-admin", msp_id="Org1MSP", expected_role="gx_admin")
    )

    async def first(hash_: bytes | None) -> int:
        stream = client.filtered_blocks(me, channel="gxchannel", start_block=None, tls_cert_hash=hash_)
        try:
            return (await anext(stream)).number
        finally:
            await stream.aclose()

    try:
        assert await first(tls_cert_hash(cert)) == 0
        for wrong in (None, hashlib.sha256(b"another certificate").digest()):
            with pytest.raises(FabricError) as exc:
                await first(wrong)
            assert exc.value.error_code == "DELIVER_BAD_REQUEST", str(exc.value)
        assert emu.stats()["deliver_seeks"] == 1
    finally:
        await client.close()
        emu.stop()
