"""A broken or hostile gateway: every parser of a peer answer, fuzzed (hypothesis).

Properties: nothing but our own FabricError leaves a parser; a CommitStatus or block answer is only
believed when it is about the exact tx id and in a block that can hold it; the commit watcher never
answers a wait from a block that skipped ahead, from a contradictory block or with an unknown code.

Budget: derandomized and small in CI (``GXSUBMIT_FUZZ_EXAMPLES``, default 150 per test); a longer
campaign: ``bench/fuzz_answers.sh`` (the same tests with more examples and a random seed).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.peer import events_pb2, transaction_pb2
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gxsubmit.fabric.answers import (
    MAX_BLOCK_NUMBER,
    FilteredBlock,
    parse_commit_status,
    parse_deliver,
    parse_endorse,
    parse_evaluate,
)
from gxsubmit.fabric.codes import DUPLICATE_TXID, MVCC_READ_CONFLICT, VALID, code_name
from gxsubmit.fabric.commits import CommitWatcher
from gxsubmit.fabric.errors import ErrorClass, FabricError, from_rpc_error
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import Proposal, build_proposal
from gxsubmit.wallet import load_identity

EXAMPLES = int(os.environ.get("GXSUBMIT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=os.environ.get("GXSUBMIT_FUZZ_RANDOM", "") == "",
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture],
)
@pytest.fixture(scope="module")
def proposal(wallet: Path) -> Proposal:
    wi = load_identity(wallet, "org1-admin", msp_id="Org1MSP", expected_role="gx_admin")
    ident = SigningIdentity.from_wallet(wi)
    return build_proposal(ident, channel="gxchannel", chaincode="gxtv3", function="CreateUser",
                          args=["u1", "h", "MY", "30"], nonce=b"n" * 24)


# --- mutations of a real answer: truncated, a byte flipped, junk inserted, oversized --------------

def _mutate(data: bytes, how: int, at: int, junk: bytes) -> bytes:
    i = at % (len(data) + 1)
    if how == 0:
        return data[:i]
    if how == 1 and data:
        j = at % len(data)
        return data[:j] + bytes([data[j] ^ 0xFF]) + data[j + 1:]
    if how == 2:
        return data[:i] + junk + data[i:]
    if how == 3:
        return data + b"\xfa\x07" + bytes([len(junk) & 0x7F]) + junk[:0x7F]  # an unknown field
    return junk


mutations = st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.binary(max_size=64))
uint64 = st.integers(0, 2**64 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)


def _commit_status_bytes(code: int, block: int) -> bytes:
    return bytes(gateway_pb2.CommitStatusResponse(result=code, block_number=block).SerializeToString())


# --- CommitStatus ---------------------------------------------------------------------------------

def _check_commit_status(data: bytes) -> None:
    try:
        res = parse_commit_status(data, "tx-1")
    except FabricError as err:
        assert err.stage == "commit_status" and err.tx_id == "tx-1"
        return
    assert res.tx_id == "tx-1"  # the answer is about the tx id we asked for, whatever it says
    assert 1 <= res.block_number <= MAX_BLOCK_NUMBER  # block 0 is the genesis block: no tx of ours
    assert res.code_name == code_name(res.code)


@FUZZ
@given(st.binary(max_size=512))
def test_commit_status_random_bytes(data: bytes) -> None:
    _check_commit_status(data)


@FUZZ
@given(int32, uint64, mutations)
def test_commit_status_mutated(code: int, block: int, m: tuple[int, int, bytes]) -> None:
    _check_commit_status(_mutate(_commit_status_bytes(code, block), *m))


def test_an_empty_commit_status_answer_is_not_valid_in_block_0() -> None:
    """A truncated answer of zero bytes decodes as result VALID (0), block 0 (proto3 defaults)."""
    with pytest.raises(FabricError):
        parse_commit_status(b"", "tx-1")
    with pytest.raises(FabricError):
        parse_commit_status(_commit_status_bytes(VALID, 0), "tx-1")


def test_a_block_number_beyond_bigint_is_refused() -> None:
    """commit_block is a bigint column: 2**64-1 from the peer would fail the whole committed batch."""
    with pytest.raises(FabricError):
        parse_commit_status(_commit_status_bytes(VALID, 2**64 - 1), "tx-1")


# --- DeliverFiltered ------------------------------------------------------------------------------

tx_ids = st.one_of(st.sampled_from(["tx-1", "tx-2", "TX-1", "tx-1 ", "tx-1\x00", ""]), st.text(max_size=20))


@st.composite
def deliver_bytes(draw: Any) -> bytes:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        txs = draw(st.lists(st.tuples(tx_ids, int32), max_size=8))
        fb = events_pb2.FilteredBlock(channel_id=draw(st.sampled_from(["gxchannel", "other", ""])),
                                      number=draw(uint64))
        for txid, code in txs:
            fb.filtered_transactions.add(txid=txid, tx_validation_code=code)
        msg = events_pb2.DeliverResponse(filtered_block=fb)
    elif kind == 1:
        msg = events_pb2.DeliverResponse(status=draw(int32))
    else:
        msg = events_pb2.DeliverResponse(block=common_pb2.Block())
    return bytes(_mutate(msg.SerializeToString(), *draw(mutations))) if draw(st.booleans()) else \
        msg.SerializeToString()


def _check_deliver(data: bytes) -> None:
    try:
        block = parse_deliver(data, "gxchannel")
    except FabricError as err:
        assert err.stage == "deliver"
        return
    if block is None:
        return
    assert isinstance(block, FilteredBlock) and 0 <= block.number <= MAX_BLOCK_NUMBER
    for txid, code in block.transactions:
        assert isinstance(txid, str) and -(2**31) <= code < 2**31


@FUZZ
@given(st.binary(max_size=512))
def test_deliver_random_bytes(data: bytes) -> None:
    _check_deliver(data)


@FUZZ
@given(deliver_bytes())
def test_deliver_structured_and_mutated(data: bytes) -> None:
    _check_deliver(data)


# --- Endorse --------------------------------------------------------------------------------------

def _check_endorse(data: bytes, p: Proposal) -> None:
    try:
        prepared = parse_endorse(data, p)
    except FabricError as err:
        assert err.stage == "endorse" and err.tx_id == p.tx_id
        return
    # Only ever our own transaction is handed back for signing.
    assert prepared.tx_id == p.tx_id and prepared.channel == "gxchannel"


def _good_endorse(p: Proposal) -> bytes:
    payload = common_pb2.Payload(
        header=common_pb2.Header(channel_header=p.channel_header, signature_header=p.signature_header),
        data=transaction_pb2.Transaction().SerializeToString(),
    )
    env = common_pb2.Envelope(payload=payload.SerializeToString())
    return bytes(gateway_pb2.EndorseResponse(prepared_transaction=env).SerializeToString())


@FUZZ
@given(st.binary(max_size=512))
def test_endorse_random_bytes(proposal: Proposal, data: bytes) -> None:
    _check_endorse(data, proposal)


@FUZZ
@given(mutations)
def test_endorse_mutated(proposal: Proposal, m: tuple[int, int, bytes]) -> None:
    _check_endorse(_mutate(_good_endorse(proposal), *m), proposal)


def test_a_good_endorse_answer_is_ours(proposal: Proposal) -> None:
    assert parse_endorse(_good_endorse(proposal), proposal).tx_id == proposal.tx_id


# --- Evaluate -------------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=512), mutations)
def test_evaluate_random_and_mutated(data: bytes, m: tuple[int, int, bytes]) -> None:
    honest = gateway_pb2.EvaluateResponse(result={"status": 200, "payload": b"true"}).SerializeToString()
    for answer in (data, _mutate(honest, *m)):
        try:
            assert isinstance(parse_evaluate(answer, "tx-1"), bytes)
        except FabricError as err:
            assert err.stage == "evaluate" and err.tx_id == "tx-1"


# --- error details (grpc-status-details-bin) ------------------------------------------------------

class _FakeRpcError(grpc.RpcError):  # type: ignore[misc]  # grpc has no stubs: RpcError is Any
    def __init__(self, code: grpc.StatusCode, message: str, trailer: bytes | None) -> None:
        self._code, self._message, self._trailer = code, message, trailer

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return (("grpc-status-details-bin", self._trailer),) if self._trailer is not None else ()


def _status_bytes(code: int, message: str, details: list[tuple[str, bytes]]) -> bytes:
    st_ = status_pb2.Status(code=code, message=message)
    for type_url, value in details:
        d = st_.details.add()
        d.type_url, d.value = type_url, value
    return bytes(st_.SerializeToString())


detail_values = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda a, m, msg: gateway_pb2.ErrorDetail(address=a, msp_id=m, message=msg).SerializeToString(),
              st.text(max_size=20), st.text(max_size=10), st.text(max_size=200)),
)


@FUZZ
@given(st.sampled_from(list(grpc.StatusCode)), st.text(max_size=300), st.booleans(), int32,
       st.lists(st.tuples(st.text(max_size=40), detail_values), max_size=6), mutations,
       st.sampled_from(["endorse", "submit", "commit_status", "evaluate", "deliver"]))
def test_error_details(code: grpc.StatusCode, message: str, garble: bool, status_code: int,
                       details: list[tuple[str, bytes]], m: tuple[int, int, bytes], stage: str) -> None:
    trailer = _status_bytes(status_code, message, details)
    if garble:
        trailer = _mutate(trailer, *m)
    err = from_rpc_error(stage, _FakeRpcError(code, message, trailer), tx_id="tx-1")
    assert isinstance(err, FabricError) and err.stage == stage
    assert len(str(err)) <= 8192


def test_a_flood_of_error_details_is_bounded() -> None:
    """A peer can attach megabytes of details; they end up in a log line and the row's error column."""
    details = [("type.googleapis.com/gateway.ErrorDetail",
                gateway_pb2.ErrorDetail(address="peer", msp_id="Org1MSP", message="x" * 100_000)
                .SerializeToString())] * 2000
    err = from_rpc_error("endorse", _FakeRpcError(grpc.StatusCode.ABORTED, "y" * 1_000_000,
                                                  _status_bytes(10, "y", details)), tx_id="tx-1")
    assert len(str(err)) <= 8192 and len(repr(err)) <= 9000
    assert len(err.details) <= 11  # 10 and a line saying how many more


# --- the commit watcher: gaps, contradictions, unknown codes --------------------------------------

class _NoClient:
    """The watcher is driven by hand; it must never touch the client."""


def _watcher() -> CommitWatcher:
    return CommitWatcher(_NoClient(), lambda: None, "c")  # type: ignore[arg-type, return-value]  # fakes: no client, no signer


async def test_a_tx_id_listed_twice_with_different_codes_goes_to_commit_status() -> None:
    w = _watcher()
    w._on_block(1, ())
    a, b, c = w.expect("a"), w.expect("b"), w.expect("c")
    assert a is not None and b is not None and c is not None
    w._on_block(2, (("a", MVCC_READ_CONFLICT), ("a", VALID), ("b", VALID), ("b", MVCC_READ_CONFLICT),
                    ("c", VALID), ("c", DUPLICATE_TXID)))
    assert a.result() is None and b.result() is None  # contradictory: CommitStatus decides
    res = c.result()  # a first copy and a later one marked DUPLICATE_TXID: the peer's normal answer
    assert res is not None and res.valid


async def test_an_unknown_validation_code_on_the_stream_goes_to_commit_status() -> None:
    w = _watcher()
    w._on_block(1, ())
    fut = w.expect("a")
    assert fut is not None
    w._on_block(2, (("a", 4242),))
    assert fut.result() is None


class _JumpingClient:
    """Block 5, then (once a wait is registered) block 9: three blocks were skipped."""

    def __init__(self) -> None:
        self.starts: list[int | None] = []
        self.registered = asyncio.Event()
        self.reconnected = asyncio.Event()

    async def filtered_blocks(self, identity: object, *, channel: str, start_block: int | None,
                              tls_cert_hash: bytes | None = None) -> AsyncIterator[FilteredBlock]:
        self.starts.append(start_block)
        if len(self.starts) > 1:
            self.reconnected.set()
        if len(self.starts) == 1:
            yield FilteredBlock(5, ())
            await self.registered.wait()
            yield FilteredBlock(9, (("t", VALID),))
        await asyncio.Event().wait()


async def test_a_block_stream_that_skips_blocks_is_not_believed() -> None:
    client = _JumpingClient()
    up = asyncio.Event()
    w = CommitWatcher(client, lambda: None, "c", on_state=lambda live: up.set() if live else None)  # type: ignore[arg-type, return-value]  # fakes: no client, no signer
    stop = asyncio.Event()
    task = asyncio.create_task(w.run(stop))
    try:
        await asyncio.wait_for(up.wait(), 30)
        fut = w.expect("t")
        assert fut is not None
        client.registered.set()
        result = await asyncio.wait_for(fut, 30)
        # The stream jumped from 5 to 9: it is broken, the wait goes to CommitStatus, and the
        # reconnect resumes at block 6, the first one not seen.
        assert result is None
        await asyncio.wait_for(client.reconnected.wait(), 30)
        assert client.starts == [None, 6] and w.next_block == 6
    finally:
        stop.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


blocks_strategy = st.lists(
    st.tuples(st.integers(0, 12), st.lists(st.tuples(st.sampled_from(["a", "b", "c", "A", "a "]),
                                                     st.sampled_from([0, 0, 0, 9, 11, 12, 254, 255, 4242])),
                                           max_size=6)),
    min_size=1, max_size=8,
)


class _ScriptClient:
    """Block 1, then (once the waits are registered) the script's blocks, then the stream ends; any
    reconnect gets nothing more."""

    def __init__(self, blocks: list[tuple[int, list[tuple[str, int]]]], registered: asyncio.Event) -> None:
        self.blocks, self.registered, self.calls = blocks, registered, 0

    async def filtered_blocks(self, identity: object, *, channel: str, start_block: int | None,
                              tls_cert_hash: bytes | None = None) -> AsyncIterator[FilteredBlock]:
        self.calls += 1
        if self.calls > 1:
            await asyncio.Event().wait()
        yield FilteredBlock(1, ())
        await self.registered.wait()
        for number, txs in self.blocks:
            yield FilteredBlock(number, tuple(txs))
        raise FabricError(stage="deliver", error_class=ErrorClass.TRANSIENT, error_code="DELIVER_ENDED",
                          message="end")


def _believable(blocks: list[tuple[int, list[tuple[str, int]]]], tx: str) -> set[tuple[int, int]]:
    """(block, code) answers a correct watcher may give for ``tx``: from a block reached without a gap
    (numbering continues from 2), in which ``tx`` has exactly one entry that is not DUPLICATE_TXID,
    with a known code that is not DUPLICATE_TXID."""
    ok: set[tuple[int, int]] = set()
    expected = 2
    for number, txs in blocks:
        if number < expected:
            continue
        if number > expected:
            break
        expected += 1
        codes = [c for t, c in txs if t == tx]
        firsts = [c for c in codes if c != DUPLICATE_TXID]
        if len(firsts) == 1 and codes[0] == firsts[0] and not code_name(firsts[0]).startswith("UNKNOWN"):
            ok.add((number, firsts[0]))
    return ok


@FUZZ
@given(blocks_strategy)
def test_watcher_answers_only_what_the_blocks_say(blocks: list[tuple[int, list[tuple[str, int]]]]) -> None:

    async def go() -> dict[str, Any]:
        registered, up = asyncio.Event(), asyncio.Event()
        w = CommitWatcher(_ScriptClient(blocks, registered), lambda: None, "c",  # type: ignore[arg-type, return-value]  # fakes: no client, no signer
                          on_state=lambda live: up.set() if live else None)
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(stop))
        await asyncio.wait_for(up.wait(), 10)
        futs = {t: w.expect(t) for t in ("a", "b", "c")}
        registered.set()
        # every wait is answered: by a block, or None when the stream broke or ended
        out = {t: await asyncio.wait_for(f, 10) for t, f in futs.items() if f is not None}
        stop.set()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return out

    answers = asyncio.run(go())
    for tx, res in answers.items():
        if res is None:
            continue  # CommitStatus decides: always safe
        assert res.tx_id == tx
        assert (res.block_number, res.code) in _believable(blocks, tx), (tx, res, blocks)
