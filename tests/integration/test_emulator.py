"""The Gateway emulator over real gRPC: peer checks, envelope shape, MVCC, duplicates, ledger reload, faults.

A raw client (fabric_protos + cryptography, see test_emulator_support) crafts good and bad requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import proposal_pb2, proposal_response_pb2, transaction_pb2
from test_emulator_support import Failure, RawGateway, RawIdentity, build_proposal, expired_cert_pems, signed
from waiting import wait_for

from gxsubmit.devwallet import issue_identity, new_ca
from gxsubmit.emulator import Emulator, Faults

TX = transaction_pb2.TxValidationCode
ABORTED_ENDORSE = "failed to endorse transaction, see attached details for more info"


def ident(wallet: Path, name: str = "org1-partner-api") -> RawIdentity:
    return RawIdentity.from_wallet(wallet, name)


def ledger_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def create_user_args(user: str) -> list[str]:
    return [user, "ab" * 32, "NG", "30"]


# ---------------------------------------------------------------------------------------------


def test_endorse_builds_the_gateway_envelope_and_commits(start_emulator: Any, wallet: Path) -> None:
    emu, gw = start_emulator()
    me = ident(wallet)
    p = build_proposal(
        me, "IdentityContract:CreateUser", create_user_args("env-1"), transient={"secret": b"x"}
    )
    env = gw.endorse(p)
    assert not isinstance(env, Failure), env
    assert env.signature == b""  # Endorse returns the UNSIGNED envelope

    payload = common_pb2.Payload.FromString(env.payload)
    assert payload.header.channel_header == p.header.channel_header
    assert payload.header.signature_header == p.header.signature_header
    tx = transaction_pb2.Transaction.FromString(payload.data)
    assert len(tx.actions) == 1
    assert tx.actions[0].header == p.header.signature_header
    cap = transaction_pb2.ChaincodeActionPayload.FromString(tx.actions[0].payload)
    cpp = proposal_pb2.ChaincodeProposalPayload.FromString(cap.chaincode_proposal_payload)
    assert len(cpp.TransientMap) == 0 and cpp.input  # transient stripped, input kept
    prp = proposal_response_pb2.ProposalResponsePayload.FromString(cap.action.proposal_response_payload)
    assert (
        prp.proposal_hash
        == hashlib.sha256(
            p.header.channel_header + p.header.signature_header + cap.chaincode_proposal_payload
        ).digest()
    )
    action = proposal_pb2.ChaincodeAction.FromString(prp.extension)
    assert action.chaincode_id.name == "gxtv3" and action.response.status == 200
    assert json.loads(action.response.payload)["userId"] == "env-1"
    assert action.results and action.events
    endorsers = []
    for e in cap.action.endorsements:
        sid = identities_pb2.SerializedIdentity.FromString(e.endorser)
        endorsers.append(sid.mspid)
        pub = x509.load_pem_x509_certificate(sid.id_bytes).public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(e.signature, cap.action.proposal_response_payload + e.endorser, ec.ECDSA(hashes.SHA256()))
    assert endorsers == ["Org1MSP", "Org2MSP"]

    assert not isinstance(gw.submit(p.tx_id, signed(env, me)), Failure)
    st = gw.commit_status(me, p.tx_id)
    assert not isinstance(st, Failure), st
    assert st.result == TX.VALID and st.block_number >= 1
    emu.stop()
    (line,) = ledger_lines(emu.ledger_path)
    assert line["tx_id"] == p.tx_id and line["validation_code"] == "VALID"
    assert line["function"] == "IdentityContract:CreateUser" and line["args"] == create_user_args("env-1")
    assert line["mspid"] == "Org1MSP" and line["role"] == "gx_partner_api" and line["channel"] == "gxchannel"
    assert line["event"]["name"] == "UserCreated" and len(line["creator_fingerprint"]) == 64


def _expired_identity(wallet: Path) -> RawIdentity:
    return RawIdentity.from_pems(*expired_cert_pems(wallet))


def _foreign_identity() -> RawIdentity:
    cert, key = issue_identity(new_ca("ca.evil.example.com"), "mallory", "gx_partner_api")
    return RawIdentity.from_pems(cert, key)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            "bad_signature",
            "error validating proposal: access denied: channel [gxchannel] creator org [Org1MSP]",
        ),
        ("high_s", "error validating proposal: access denied: channel [gxchannel] creator org [Org1MSP]"),
        ("unknown_ca", "error validating proposal: access denied: channel [gxchannel] creator org [Org1MSP]"),
        (
            "unknown_msp",
            "error validating proposal: access denied: channel [gxchannel] creator org [Org9MSP]",
        ),
        ("tx_id_mismatch", "error validating proposal: incorrectly computed txid"),
        ("unsigned", "error validating proposal: empty signature bytes"),
        ("expired", "proposal client identity expired"),
    ],
)
def test_peer_rejects_bad_proposals(start_emulator: Any, wallet: Path, case: str, expected: str) -> None:
    _emu, gw = start_emulator()
    me = ident(wallet)
    args = create_user_args(f"u-{case}")
    fn = "IdentityContract:CreateUser"
    if case == "bad_signature":
        p = build_proposal(me, fn, args, signer=ident(wallet, "org1-admin"))
    elif case == "high_s":
        p = build_proposal(me, fn, args, high_s=True)
    elif case == "unknown_ca":
        p = build_proposal(_foreign_identity(), fn, args)
    elif case == "unknown_msp":
        p = build_proposal(RawIdentity("Org9MSP", me.cert_pem, me.key), fn, args)
    elif case == "tx_id_mismatch":
        p = build_proposal(me, fn, args, tx_id="00" * 32)
    elif case == "unsigned":
        p = build_proposal(me, fn, args, sign=False)
    else:
        p = build_proposal(_expired_identity(wallet), fn, args)
    res = gw.endorse(p)
    assert isinstance(res, Failure), res
    assert res.code == grpc.StatusCode.ABORTED and res.message == ABORTED_ENDORSE
    assert len(res.details) == 1
    d = res.details[0]
    assert d.address == "peer0.org1.example.com:7051" and d.msp_id == "Org1MSP"
    assert d.message.startswith(expected), d.message
    # The same proposal to Evaluate: the endorser's validation error, not a chaincode error.
    ev = gw.evaluate(p)
    assert isinstance(ev, Failure)
    want = grpc.StatusCode.UNAVAILABLE if case == "expired" else grpc.StatusCode.FAILED_PRECONDITION
    assert ev.code == want and ev.details[0].message.startswith(expected)


def test_high_s_is_the_only_difference(start_emulator: Any, wallet: Path) -> None:
    """Control for the high-S case: the same signature with low S is accepted."""
    _emu, gw = start_emulator()
    me = ident(wallet)
    p = build_proposal(me, "IdentityContract:CreateUser", create_user_args("u-low-s"))
    assert not isinstance(gw.endorse(p), Failure)


def test_unparsable_proposal_is_invalid_argument(start_emulator: Any, wallet: Path) -> None:
    _emu, gw = start_emulator()
    p = build_proposal(ident(wallet), "IdentityContract:CreateUser", create_user_args("x"))
    p.signed.proposal_bytes = b"\xff\xff\xff"
    res = gw.endorse(p)
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.INVALID_ARGUMENT and not res.details


def test_role_and_argument_count_are_chaincode_errors(start_emulator: Any, wallet: Path) -> None:
    _emu, gw = start_emulator()
    res = gw.endorse(build_proposal(ident(wallet), "TokenomicsContract:Mint", ["u", "5", ""]))
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.ABORTED
    assert res.details[0].message == (
        "chaincode response 403, access denied: caller role gx_partner_api, required gx_super_admin"
    )
    res = gw.endorse(build_proposal(ident(wallet), "IdentityContract:CreateUser", ["only-one"]))
    assert isinstance(res, Failure)
    assert res.details[0].message == "chaincode response 400, Expected 4 parameters, but 1 have been supplied"
    res = gw.endorse(build_proposal(ident(wallet), "IdentityContract:NoSuchThing", []))
    assert isinstance(res, Failure) and "does not exist" in res.details[0].message


def test_duplicate_tx_id_rejected_at_endorsement(start_emulator: Any, wallet: Path) -> None:
    _emu, gw = start_emulator()
    me = ident(wallet)
    nonce = os.urandom(24)
    tx_id, st = gw.run(me, "IdentityContract:CreateUser", create_user_args("dup-e"), nonce=nonce)
    assert not isinstance(st, Failure) and st.result == TX.VALID
    again = build_proposal(me, "IdentityContract:CreateUser", create_user_args("dup-e"), nonce=nonce)
    assert again.tx_id == tx_id
    res = gw.endorse(again)
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.ABORTED and res.message == ABORTED_ENDORSE
    assert res.details[0].message == f"duplicate transaction found [{tx_id}]. Creator [{me.creator.hex()}]"


def test_submit_requires_a_signed_envelope_and_a_valid_signature(start_emulator: Any, wallet: Path) -> None:
    _emu, gw = start_emulator()
    me = ident(wallet)
    p = build_proposal(me, "IdentityContract:CreateUser", create_user_args("unsigned-env"))
    env = gw.endorse(p)
    res = gw.submit(p.tx_id, env)
    assert isinstance(res, Failure)
    assert (
        res.code == grpc.StatusCode.INVALID_ARGUMENT and res.message == "prepared transaction must be signed"
    )
    bad = signed(env, ident(wallet, "org1-admin"))  # signed by someone other than the creator
    res = gw.submit(p.tx_id, bad)
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.ABORTED
    assert res.message.startswith("received unsuccessful response from orderer: status=FORBIDDEN")
    high = common_pb2.Envelope(payload=env.payload, signature=me.sign(env.payload, high_s=True))
    res = gw.submit(p.tx_id, high)
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.ABORTED
    # Nothing was ordered: the correctly signed envelope still commits VALID.
    assert not isinstance(gw.submit(p.tx_id, signed(env, me)), Failure)
    st = gw.commit_status(me, p.tx_id)
    assert st.result == TX.VALID


def test_bad_envelope_signature_at_commit_when_the_committer_checks(
    start_emulator: Any, wallet: Path
) -> None:
    emu, gw = start_emulator(envelope_check="committer")
    me = ident(wallet)
    p = build_proposal(me, "IdentityContract:CreateUser", create_user_args("bcs"))
    env = gw.endorse(p)
    assert not isinstance(gw.submit(p.tx_id, signed(env, ident(wallet, "org1-admin"))), Failure)
    st = gw.commit_status(me, p.tx_id)
    assert st.result == TX.BAD_CREATOR_SIGNATURE
    # A later good copy is a duplicate; CommitStatus keeps reporting the first copy.
    assert not isinstance(gw.submit(p.tx_id, signed(env, me)), Failure)
    wait_for(lambda: len(ledger_lines(emu.ledger_path)) == 2, timeout=10)
    assert gw.commit_status(me, p.tx_id).result == TX.BAD_CREATOR_SIGNATURE
    assert [x["validation_code"] for x in ledger_lines(emu.ledger_path)] == [
        "BAD_CREATOR_SIGNATURE",
        "DUPLICATE_TXID",
    ]


def test_resubmitted_envelope_is_duplicate_and_commit_status_reports_first(
    start_emulator: Any, wallet: Path
) -> None:
    # block_size 2 + a long block time: the first two submissions land in one block.
    emu, gw = start_emulator(block_size=2, block_time=30)
    me = ident(wallet)
    p = build_proposal(me, "IdentityContract:CreateUser", create_user_args("dup-c"))
    env = signed(gw.endorse(p), me)
    assert not isinstance(gw.submit(p.tx_id, env), Failure)
    assert not isinstance(gw.submit(p.tx_id, env), Failure)  # same tx id twice in one block
    st = gw.commit_status(me, p.tx_id)
    assert st.result == TX.VALID
    emu.block_size = 1
    emu._core.block_size = 1  # later copies: one per block
    assert not isinstance(gw.submit(p.tx_id, env), Failure)  # a copy in a later block
    wait_for(lambda: len(ledger_lines(emu.ledger_path)) == 3, timeout=10)
    lines = ledger_lines(emu.ledger_path)
    assert [x["validation_code"] for x in lines] == ["VALID", "DUPLICATE_TXID", "DUPLICATE_TXID"]
    assert lines[0]["block"] == lines[1]["block"] < lines[2]["block"]
    st2 = gw.commit_status(me, p.tx_id)
    assert (st2.result, st2.block_number) == (TX.VALID, st.block_number)


def test_mvcc_conflict_within_a_block_but_not_for_unrelated_keys(start_emulator: Any, wallet: Path) -> None:
    emu, gw = start_emulator()
    admin, sa = ident(wallet, "org1-admin"), ident(wallet, "org1-super-admin")
    for user in ("alice", "carol"):
        _, st = gw.run(sa, "TokenomicsContract:Mint", [user, "100", ""])
        assert st.result == TX.VALID
    emu._core.block_size = 4
    emu._core.block_time = 30
    # Two transfers from alice, one from carol, and one unrelated user creation: endorsed on the same state.
    props = [
        (
            admin,
            build_proposal(admin, "TokenomicsContract:TransferWithFees", ["alice", "bob", "10", "", "r", ""]),
        ),
        (
            admin,
            build_proposal(
                admin, "TokenomicsContract:TransferWithFees", ["alice", "dave", "10", "", "r", ""]
            ),
        ),
        (
            admin,
            build_proposal(
                admin, "TokenomicsContract:TransferWithFees", ["carol", "erin", "10", "", "r", ""]
            ),
        ),
        (
            ident(wallet),
            build_proposal(ident(wallet), "IdentityContract:CreateUser", create_user_args("zed")),
        ),
    ]
    envs = [(who, p, signed(gw.endorse(p), who)) for who, p in props]
    for _who, p, env in envs:
        assert not isinstance(gw.submit(p.tx_id, env), Failure)
    codes = [gw.commit_status(who, p.tx_id).result for who, p, _ in envs]
    assert codes == [TX.VALID, TX.MVCC_READ_CONFLICT, TX.VALID, TX.VALID]
    blocks = {gw.commit_status(who, p.tx_id).block_number for who, p, _ in envs}
    assert len(blocks) == 1
    res = gw.evaluate(build_proposal(admin, "TokenomicsContract:GetBalance", ["alice"]))
    assert json.loads(res.result.payload)["balance"] == "90"


def test_business_rules(start_emulator: Any, wallet: Path) -> None:
    _emu, gw = start_emulator()
    admin, sa, partner = ident(wallet, "org1-admin"), ident(wallet, "org1-super-admin"), ident(wallet)
    assert gw.run(partner, "IdentityContract:CreateUser", create_user_args("ann"))[1].result == TX.VALID
    _, again = gw.run(partner, "IdentityContract:CreateUser", create_user_args("ann"))
    assert isinstance(again, Failure) and "user ann already exists" in again.detail_text()
    assert gw.run(admin, "TokenomicsContract:DistributeGenesis", ["ann", "NG"])[1].result == TX.VALID
    _, twice = gw.run(admin, "TokenomicsContract:DistributeGenesis", ["ann", "NG"])
    assert isinstance(twice, Failure) and "genesis already distributed" in twice.detail_text()
    _, poor = gw.run(admin, "TokenomicsContract:TransferWithFees", ["ann", "ben", "5000", "", "r", ""])
    assert isinstance(poor, Failure) and "insufficient balance" in poor.detail_text()
    ok = gw.run(admin, "TokenomicsContract:TransferWithFees", ["ann", "ben", "5", "", "r", "idem-1"])[1]
    assert ok.result == TX.VALID
    _, reused = gw.run(admin, "TokenomicsContract:TransferWithFees", ["ann", "ben", "5", "", "r", "idem-1"])
    assert isinstance(reused, Failure) and "idem-1" in reused.detail_text()
    assert gw.run(sa, "TokenomicsContract:FreezeWallet", ["ann", "test"])[1].result == TX.VALID
    _, frozen = gw.run(admin, "TokenomicsContract:TransferWithFees", ["ann", "ben", "5", "", "r", ""])
    assert isinstance(frozen, Failure) and "frozen" in frozen.detail_text()
    assert gw.run(sa, "TokenomicsContract:UnfreezeWallet", ["ann"])[1].result == TX.VALID
    assert (
        gw.run(admin, "TokenomicsContract:TransferWithFees", ["ann", "ben", "5", "", "r", ""])[1].result
        == TX.VALID
    )
    assert gw.run(partner, "GovernanceContract:VoteOnProposal", ["p1", "yes"])[1].result == TX.VALID


def test_ledger_survives_restart(tmp_path: Path, wallet: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    me = ident(wallet)
    emu = Emulator(wallet=wallet, ledger=ledger, block_time=0.05)
    gw = RawGateway(emu.start())
    nonce = os.urandom(24)
    tx1, st1 = gw.run(me, "IdentityContract:CreateUser", create_user_args("keep"), nonce=nonce)
    assert st1.result == TX.VALID
    pending = build_proposal(me, "IdentityContract:CreateUser", create_user_args("later"))
    pending_env = signed(gw.endorse(pending), me)  # endorsed before the restart, submitted after
    gw.close()
    emu.stop()
    height = emu.stats()["height"]

    emu2 = Emulator(wallet=wallet, ledger=ledger, block_time=0.05)
    gw2 = RawGateway(emu2.start())
    try:
        assert emu2.stats()["replayed"] == 1
        st = gw2.commit_status(me, tx1)  # answered from the reloaded index
        assert (st.result, st.block_number) == (TX.VALID, st1.block_number)
        dup = gw2.endorse(
            build_proposal(me, "IdentityContract:CreateUser", create_user_args("keep"), nonce=nonce)
        )
        assert isinstance(dup, Failure) and "duplicate transaction found" in dup.detail_text()
        _, exists = gw2.run(me, "IdentityContract:CreateUser", create_user_args("keep"))
        assert isinstance(exists, Failure) and "already exists" in exists.detail_text()
        assert not isinstance(gw2.submit(pending.tx_id, pending_env), Failure)
        st2 = gw2.commit_status(me, pending.tx_id)
        assert st2.result == TX.VALID and st2.block_number == height
    finally:
        gw2.close()
        emu2.stop()


def test_torn_last_line_is_dropped_on_reload(tmp_path: Path, wallet: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    emu = Emulator(wallet=wallet, ledger=ledger, block_time=0.05)
    gw = RawGateway(emu.start())
    gw.run(ident(wallet), "IdentityContract:CreateUser", create_user_args("torn"))
    gw.close()
    emu.stop()
    with ledger.open("ab") as fh:
        fh.write(b'{"tx_id": "half')
    emu2 = Emulator(wallet=wallet, ledger=ledger, block_time=0.05)
    emu2.start()
    emu2.stop()
    assert emu2.stats()["replayed"] == 1
    assert ledger.read_bytes().endswith(b"}\n")


def test_qscc_get_transaction_by_id_answers_from_the_ledger_index(start_emulator: Any, wallet: Path) -> None:
    # The worker asks this about a lost tx id of an expired certificate (docs/design.md#rotated-certificates):
    # a committed tx id gives its validation code, an unknown one the peer ledger's "no such transaction ID"
    # error.
    _emu, gw = start_emulator()
    me = ident(wallet)
    p = build_proposal(me, "IdentityContract:CreateUser", create_user_args("qscc-1"))
    assert not isinstance(gw.submit(p.tx_id, signed(gw.endorse(p), me)), Failure)
    assert gw.commit_status(me, p.tx_id).result == TX.VALID

    def ask(tx_id: str, function: str = "GetTransactionByID") -> Any:
        return gw.evaluate(build_proposal(me, function, ["gxchannel", tx_id], chaincode="qscc"))

    found = ask(p.tx_id)
    assert not isinstance(found, Failure), found
    assert transaction_pb2.ProcessedTransaction.FromString(found.result.payload).validationCode == TX.VALID
    missing = hashlib.sha256(b"never submitted").hexdigest()
    got = ask(missing)
    assert isinstance(got, Failure) and got.code == grpc.StatusCode.UNKNOWN
    assert f"no such transaction ID [{missing}] in index" in got.message
    assert f"no such transaction ID [{missing}]" in got.detail_text()
    other = ask(p.tx_id, "GetBlockByNumber")
    assert isinstance(other, Failure) and "GetBlockByNumber not found" in other.message


def test_commit_status_blocks_until_commit_or_deadline(start_emulator: Any, wallet: Path) -> None:
    emu, gw = start_emulator(block_time=30, block_size=1000)
    me = ident(wallet)
    res = gw.commit_status(me, "ab" * 32, timeout=0.3)
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.DEADLINE_EXCEEDED
    p = build_proposal(me, "IdentityContract:CreateUser", create_user_args("waiter"))
    env = signed(gw.endorse(p), me)
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.setdefault("st", gw.commit_status(me, p.tx_id, timeout=20)))
    t.start()
    assert not isinstance(gw.submit(p.tx_id, env), Failure)
    wait_for(lambda: emu.stats()["pending"] == 1, timeout=10)
    emu._core.block_size = 1
    emu._loop.call_soon_threadsafe(emu._core._full.set)
    t.join(timeout=20)
    assert out["st"].result == TX.VALID
    # A bad CommitStatus signature is an ACL failure.
    bad = gw.commit_status(me, p.tx_id, signer=ident(wallet, "org1-admin"))
    assert isinstance(bad, Failure) and bad.code == grpc.StatusCode.PERMISSION_DENIED


def test_chaincode_events_start_rules(start_emulator: Any, wallet: Path) -> None:
    emu, gw = start_emulator()
    me = ident(wallet)
    txs = [gw.run(me, "IdentityContract:CreateUser", create_user_args(f"ev{i}"))[0] for i in range(3)]
    # An invalid transaction's event is never delivered.
    emu.faults.mvcc = 1.0
    bad_tx, bad = gw.run(me, "IdentityContract:CreateUser", create_user_args("ev-bad"))
    assert bad.result == TX.MVCC_READ_CONFLICT
    emu.faults.mvcc = 0.0
    stream = gw.events(me, start=0)
    got = [next(stream) for _ in range(3)]
    assert [r.events[0].tx_id for r in got] == txs
    assert all(len(r.events) == 1 and r.events[0].chaincode_id == "gxtv3" for r in got)
    assert [r.block_number for r in got] == sorted(r.block_number for r in got)
    # The stream stays open and delivers the next valid commit (not the invalid one).
    tx4 = gw.run(me, "IdentityContract:CreateUser", create_user_args("ev4"))[0]
    nxt = next(stream)
    assert nxt.events[0].tx_id == tx4 and bad_tx not in [e.tx_id for e in nxt.events]
    stream.cancel()
    # after_transaction_id: starts at that tx's block and skips through it.
    s2 = gw.events(me, after_tx=txs[0], start=0)
    assert next(s2).events[0].tx_id == txs[1]
    s2.cancel()
    # newest / oldest are rejected.
    s3 = gw.events(me, newest=True)
    with pytest.raises(grpc.RpcError) as exc:
        next(s3)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_faults(start_emulator: Any, wallet: Path) -> None:
    emu, gw = start_emulator()
    me = ident(wallet)
    f: Faults = emu.faults
    # Lost ack: the client sees UNAVAILABLE but the transaction IS ordered and committed.
    f.submit_lost_ack = 1.0
    tx, res = gw.run(me, "IdentityContract:CreateUser", create_user_args("lost"))
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.UNAVAILABLE
    assert res.message == "no orderers could successfully process transaction" and res.details
    f.submit_lost_ack = 0.0
    assert gw.commit_status(me, tx).result == TX.VALID
    # Submit unavailable: not ordered; the same envelope can be resubmitted later and commits.
    f.submit_unavailable = 1.0
    p = build_proposal(me, "IdentityContract:CreateUser", create_user_args("retry"))
    env = signed(gw.endorse(p), me)
    res = gw.submit(p.tx_id, env)
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.UNAVAILABLE
    assert isinstance(gw.commit_status(me, p.tx_id, timeout=0.3), Failure)
    f.submit_unavailable = 0.0
    assert not isinstance(gw.submit(p.tx_id, env), Failure)
    assert gw.commit_status(me, p.tx_id).result == TX.VALID
    # Endorse faults.
    f.endorse_unavailable = 1.0
    assert (
        gw.run(me, "IdentityContract:CreateUser", create_user_args("x1"))[1].code
        == grpc.StatusCode.UNAVAILABLE
    )
    f.endorse_unavailable = 0.0
    f.endorse_timeout = 1.0
    res = gw.endorse(build_proposal(me, "IdentityContract:CreateUser", create_user_args("x2")), timeout=0.3)
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.DEADLINE_EXCEEDED
    f.endorse_timeout = 0.0
    # Commit-time faults.
    f.policy_failure = 1.0
    assert (
        gw.run(me, "IdentityContract:CreateUser", create_user_args("x3"))[1].result
        == TX.ENDORSEMENT_POLICY_FAILURE
    )
    f.policy_failure = 0.0
    p = build_proposal(me, "IdentityContract:CreateUser", create_user_args("x4"))
    env = signed(gw.endorse(p, orgs=["Org1MSP"]), me)  # the MAJORITY policy needs Org2 too
    gw.submit(p.tx_id, env)
    assert gw.commit_status(me, p.tx_id).result == TX.ENDORSEMENT_POLICY_FAILURE
    f.commit_status_unavailable = 1.0
    res = gw.commit_status(me, p.tx_id)
    assert isinstance(res, Failure) and res.code == grpc.StatusCode.UNAVAILABLE
    f.commit_status_unavailable = 0.0
    # A gateway outage: every RPC UNAVAILABLE until it ends.
    f.outage(60)
    assert gw.commit_status(me, p.tx_id).code == grpc.StatusCode.UNAVAILABLE
    assert (
        gw.run(me, "IdentityContract:CreateUser", create_user_args("x5"))[1].code
        == grpc.StatusCode.UNAVAILABLE
    )
    f.outage_until = 0.0
    assert gw.run(me, "IdentityContract:CreateUser", create_user_args("x5"))[1].result == TX.VALID
    # Latency is injected but calls still succeed.
    f.latency_s["*"] = (0.01, 0.02)
    assert gw.run(me, "IdentityContract:CreateUser", create_user_args("x6"))[1].result == TX.VALID
    st = emu.stats()
    assert st["lost_acks"] == 1 and st["rejected"] >= 5


def test_tls_from_the_wallet(start_emulator: Any, wallet: Path) -> None:
    emu, _ = start_emulator(insecure=False)
    gw = RawGateway(emu.port, tls_ca=(wallet / "tlsca-cert").read_bytes())
    try:
        me = ident(wallet)
        assert gw.run(me, "IdentityContract:CreateUser", create_user_args("tls"))[1].result == TX.VALID
    finally:
        gw.close()


def test_aio_client_in_another_event_loop(start_emulator: Any, wallet: Path) -> None:
    """A grpc.aio client on the test's loop talks to the emulator's loop in its thread."""
    emu, _ = start_emulator()
    me = ident(wallet)
    p = build_proposal(me, "TokenomicsContract:GetBalance", ["nobody"])

    async def go() -> bytes:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{emu.port}") as ch:
            stub = gateway_pb2_grpc.GatewayStub(ch)
            res = await stub.Evaluate(
                gateway_pb2.EvaluateRequest(
                    transaction_id=p.tx_id, channel_id="gxchannel", proposed_transaction=p.signed
                ),
                timeout=5,
            )
            return bytes(res.result.payload)

    assert json.loads(asyncio.run(go()))["balance"] == "0"


def test_cpu_per_committed_transaction(start_emulator: Any, wallet: Path) -> None:
    """Drive 400 transactions from 8 client threads and report the emulator's CPU per committed tx."""
    emu, _gw = start_emulator(block_time=0.1)
    admin = ident(wallet, "org1-admin")
    n_threads, per_thread = 8, 50
    errors: list[Any] = []

    def worker(k: int) -> None:
        local = RawGateway(emu.port)
        try:
            for i in range(per_thread):
                _tx, st = local.run(admin, "GovernanceContract:SubmitProposal", [f"param-{k}-{i}", "v"])
                if isinstance(st, Failure) or st.result != TX.VALID:
                    errors.append(st)
        finally:
            local.close()

    before = emu.stats()["cpu_s"]
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    st = emu.stats()
    assert st["valid"] == n_threads * per_thread
    per_tx_ms = (st["cpu_s"] - before) * 1000 / st["committed"]
    print(
        f"\nemulator CPU per committed tx: {per_tx_ms:.3f} ms "
        f"over {st['committed']} txs in {st['blocks']} blocks"
    )
    assert per_tx_ms > 0


def start_cli(wallet: Path, ready: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    """``python -m gxsubmit.emulator.cli`` on a free port with ``args``: (process, port) once it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gxsubmit.emulator.cli", "--listen", "127.0.0.1:0", "--wallet", str(wallet),
         "--insecure", "--ready-file", str(ready), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return proc, int(ready.read_text())
    except BaseException:
        stop_cli(proc)
        raise


def stop_cli(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM, as systemd stops it; (stdout, stderr) once it has exited."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)


def test_cli_serves_until_sigterm_and_reports_cpu(tmp_path: Path, wallet: Path) -> None:
    ledger = tmp_path / "cli-ledger.jsonl"
    proc, port = start_cli(wallet, tmp_path / "port", "--ledger", str(ledger), "--block-time", "0.05",
                           "--outage-after", "30", "--outage-for", "5")
    try:
        gw = RawGateway(port)
        try:
            me = ident(wallet)
            assert gw.run(me, "IdentityContract:CreateUser", create_user_args("cli"))[1].result == TX.VALID
        finally:
            gw.close()
    finally:
        out, err = stop_cli(proc)
    assert proc.returncode == 0, err
    assert f"emulator listening on 127.0.0.1:{port}" in out
    assert "committed=1 valid=1" in out and "cpu_per_committed_tx=" in out
    assert ledger_lines(ledger)[0]["validation_code"] == "VALID"


def test_cli_outage_flags(tmp_path: Path, wallet: Path) -> None:
    proc, port = start_cli(wallet, tmp_path / "port", "--ledger", str(tmp_path / "l.jsonl"),
                           "--outage-after", "0", "--outage-for", "600")
    try:
        gw = RawGateway(port)
        me = ident(wallet)
        try:
            wait_for(
                lambda: (
                    isinstance(r := gw.commit_status(me, "00" * 32, timeout=1), Failure)
                    and r.code == grpc.StatusCode.UNAVAILABLE
                ),
                timeout=10,
            )
        finally:
            gw.close()
    finally:
        stop_cli(proc)
    assert proc.returncode == 0
