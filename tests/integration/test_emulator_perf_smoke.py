"""The emulator's fast paths: hand-written wire bytes equal the protobuf serialization; CPU is reported.

No timing asserts: the CPU figures must merely exist, be positive and add up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric_protos.common import common_pb2
from fabric_protos.ledger.rwset import rwset_pb2
from fabric_protos.ledger.rwset.kvrwset import kv_rwset_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    chaincode_pb2,
    proposal_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from test_emulator_support import RawGateway, RawIdentity

from gxsubmit.emulator import Emulator, wire
from gxsubmit.emulator.loadgen import main as loadgen_main
from gxsubmit.emulator.validation import TX

Reads = dict[str, tuple[int, int] | None]
Writes = dict[str, bytes | None]


def _reference_payload(
    chdr: bytes,
    shdr: bytes,
    cis_input: bytes,
    reads: Reads,
    writes: Writes,
    event: tuple[str, bytes] | None,
    result: bytes,
    endorsements: list[tuple[bytes, bytes]],
) -> tuple[bytes, bytes]:
    """(ProposalResponsePayload, Payload) built with fabric_protos message objects."""
    kv = kv_rwset_pb2.KVRWSet()
    for key in sorted(reads):
        r = kv.reads.add(key=key)
        ver = reads[key]
        if ver is not None:
            r.version.SetInParent()
            r.version.block_num, r.version.tx_num = ver
    for key in sorted(writes):
        val = writes[key]
        kv.writes.add(key=key, is_delete=val is None, value=val or b"")
    txrw = rwset_pb2.TxReadWriteSet(
        data_model=rwset_pb2.TxReadWriteSet.KV,
        ns_rwset=[rwset_pb2.NsReadWriteSet(namespace="gxtv3", rwset=kv.SerializeToString())],
    )
    ev = (
        chaincode_event_pb2.ChaincodeEvent(
            chaincode_id="gxtv3", tx_id="t" * 64, event_name=event[0], payload=event[1]
        ).SerializeToString()
        if event
        else b""
    )
    input_only = proposal_pb2.ChaincodeProposalPayload(input=cis_input).SerializeToString()
    action = proposal_pb2.ChaincodeAction(
        results=txrw.SerializeToString(),
        events=ev,
        response=proposal_response_pb2.Response(status=200, payload=result),
        chaincode_id=chaincode_pb2.ChaincodeID(name="gxtv3", version="3.0"),
    )
    prp = proposal_response_pb2.ProposalResponsePayload(
        proposal_hash=hashlib.sha256(chdr + shdr + input_only).digest(), extension=action.SerializeToString()
    ).SerializeToString()
    cap = transaction_pb2.ChaincodeActionPayload(
        chaincode_proposal_payload=input_only,
        action=transaction_pb2.ChaincodeEndorsedAction(
            proposal_response_payload=prp,
            endorsements=[
                proposal_response_pb2.Endorsement(endorser=e, signature=s) for e, s in endorsements
            ],
        ),
    )
    tx = transaction_pb2.Transaction(
        actions=[transaction_pb2.TransactionAction(header=shdr, payload=cap.SerializeToString())]
    )
    payload = common_pb2.Payload(
        header=common_pb2.Header(channel_header=chdr, signature_header=shdr), data=tx.SerializeToString()
    ).SerializeToString()
    return prp, payload


CASES: list[tuple[Reads, Writes, tuple[str, bytes] | None, bytes]] = [
    ({}, {}, None, b""),
    ({"user~a": None}, {"user~a": b'{"x":1}'}, ("UserCreated", b'{"userId":"a"}'), b"{}"),
    (
        {"balance~a": (7, 0), "balance~b": (1, 3), "frozen~a": None, "k" * 300: (2**40, 2**20)},
        {"balance~a": b"1", "frozen~a": None, "empty": b"", "big": b"v" * 70_000},
        ("T", b""),
        b"r" * 200,
    ),
    ({"z": (0, 0), "\u00e9t\u00e9": (3, 0)}, {"\u00e9t\u00e9": "\u20ac".encode()}, ("", b"p"), b"x"),
]


@pytest.mark.parametrize("reads,writes,event,result", CASES)
def test_wire_bytes_equal_protobuf_serialization(
    reads: Reads, writes: Writes, event: tuple[str, bytes] | None, result: bytes
) -> None:
    chdr, shdr, cis_input = b"\x08\x03" + b"c" * 130, b"\x0a" + b"s" * 900, b"\x0a\x05input" * 30
    ends = [(b"org1-id" * 100, b"sig1" * 18), (b"org2-id", b"")]
    want_prp, want_payload = _reference_payload(chdr, shdr, cis_input, reads, writes, event, result, ends)
    input_only = wire.input_only_payload(cis_input)
    events = wire.chaincode_event("gxtv3", "t" * 64, event[0], event[1]) if event else b""
    prp = wire.proposal_response_payload(
        hashlib.sha256(chdr + shdr + input_only).digest(),
        wire.rwset("gxtv3", reads, writes),
        events,
        200,
        result,
        "gxtv3",
        "3.0",
    )
    assert prp == want_prp
    assert wire.endorsed_payload(chdr, shdr, input_only, prp, ends) == want_payload
    assert wire.input_only_payload(b"") == proposal_pb2.ChaincodeProposalPayload().SerializeToString()


@pytest.fixture
def emulator(tmp_path: Path, wallet: Path) -> Iterator[Emulator]:
    emu = Emulator(wallet=wallet, ledger=tmp_path / "ledger.jsonl", block_time=0.02, seed=3)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def test_cpu_is_reported_for_the_process_and_the_loop(emulator: Emulator, wallet: Path) -> None:
    gw = RawGateway(emulator.port)
    me = RawIdentity.from_wallet(wallet, "org1-admin")
    try:
        for i in range(5):
            _tx, st = gw.run(me, "GovernanceContract:SubmitProposal", [f"smoke-{i}", "v"])
            assert st.result == TX.VALID
    finally:
        gw.close()
    st = emulator.stats()
    assert st["committed"] == 5
    assert st["loop_cpu_s"] > 0
    assert st["cpu_s"] >= st["loop_cpu_s"]  # the process includes the loop thread
    assert st["cpu_ms_per_committed"] == pytest.approx(st["cpu_s"] * 1000 / 5)


def test_loadgen_drives_a_running_emulator(
    emulator: Emulator, wallet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", f"127.0.0.1:{emulator.port}", "--wallet", str(wallet), "-n", "20", "-c", "4"]
    assert loadgen_main(argv) == 0
    assert "valid=20 invalid=0 errors=0" in capsys.readouterr().out
    assert emulator.stats()["valid"] == 20
