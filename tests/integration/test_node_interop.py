"""Byte-level interoperability with the official Node client @hyperledger/fabric-gateway 1.11.0.

The Node client picks its own nonce and clock, so we let it build first, read nonce and timestamp back
from its bytes, rebuild in Python and compare every layer, then drive the rest of the flow (evaluate,
endorse, submit, commit status) through both and compare each request as it would go on the wire.
Runs whenever ``node`` is on PATH (``npm ci`` on first use); it is never skipped in CI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2
from fabric_protos.peer import proposal_pb2, proposal_response_pb2, transaction_pb2
from tooling import missing_tool

from gxsubmit.devwallet import make_dev_wallet
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import (
    Proposal,
    build_proposal,
    chaincode_events_request,
    commit_status_request,
    endorse_request,
    evaluate_request,
    parse_prepared,
    proposed_transaction,
    sign_envelope,
    submit_request,
)
from gxsubmit.wallet import load_identity

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
CHANNEL, CHAINCODE = "gxchannel", "gxtv3"
FUNCTION = "TokenomicsContract:Mint"
ARGS = ["user-1", "1000", "grant ✓"]
TRANSIENT = {"zeta": "last", "alpha": "first", "mid": "middle"}
ORGS = ["Org1MSP", "Org2MSP"]


def endorse_response_for(
    p: Proposal,
    *,
    result: bytes,
    header: common_pb2.Header | None = None,
) -> gateway_pb2.EndorseResponse:
    """The prepared (unsigned) envelope a gateway assembles for ``p``, without rwsets.

    Checked by the client as docs/design.md#fabric-gateway-client says."""
    prop = proposal_pb2.Proposal.FromString(p.signed_proposal.proposal_bytes)
    hdr = header or common_pb2.Header.FromString(prop.header)
    cpp = proposal_pb2.ChaincodeProposalPayload.FromString(prop.payload)
    input_only = proposal_pb2.ChaincodeProposalPayload(input=cpp.input).SerializeToString(deterministic=True)
    proposal_hash = hashlib.sha256(hdr.channel_header + hdr.signature_header + input_only).digest()
    action = proposal_pb2.ChaincodeAction(response={"status": 200, "payload": result})
    prp = proposal_response_pb2.ProposalResponsePayload(
        proposal_hash=proposal_hash, extension=action.SerializeToString(deterministic=True)
    )
    cap = transaction_pb2.ChaincodeActionPayload(
        chaincode_proposal_payload=input_only,
        action={"proposal_response_payload": prp.SerializeToString(deterministic=True)},
    )
    tx = transaction_pb2.Transaction(
        actions=[{"header": hdr.signature_header, "payload": cap.SerializeToString(deterministic=True)}]
    )
    payload = common_pb2.Payload(header=hdr, data=tx.SerializeToString(deterministic=True))
    env = common_pb2.Envelope(payload=payload.SerializeToString(deterministic=True))
    return gateway_pb2.EndorseResponse(prepared_transaction=env)


def _ser(msg: Any) -> bytes:
    return bytes(msg.SerializeToString(deterministic=True))


@pytest.fixture(scope="module")
def node_ready() -> Path:
    node = shutil.which("node")
    if node is None:
        missing_tool("node is not installed (Node.js 20 and npm)")
    if not (NODE_DIR / "node_modules" / "@hyperledger" / "fabric-gateway").exists():
        npm = shutil.which("npm")
        assert npm is not None, "node without npm"
        subprocess.run(
            [npm, "ci", "--omit=optional", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300
        )
    return Path(node)


def _node(node: Path, tmp_path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    inp = tmp_path / f"input-{payload['mode']}.json"
    inp.write_text(json.dumps(payload))
    proc = subprocess.run(
        [str(node), "interop.js", str(inp)], cwd=NODE_DIR, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _b(text: str) -> bytes:
    return base64.b64decode(text)


def test_every_layer_matches_the_official_client(node_ready: Path, tmp_path: Path) -> None:
    wallet = tmp_path / "wallet"
    make_dev_wallet(wallet)
    wi = load_identity(wallet, "org1-super-admin", msp_id="Org1MSP", expected_role="gx_super_admin")
    ident = SigningIdentity.from_wallet(wi, deterministic=True)
    common = {
        "certPath": str(wallet / "org1-super-admin-cert"),
        "keyPath": str(wallet / "org1-super-admin-key"),
        "mspId": "Org1MSP",
        "channel": CHANNEL,
        "chaincode": CHAINCODE,
    }
    after_tx = "ab" * 32
    out = _node(
        node_ready,
        tmp_path,
        {
            **common,
            "mode": "propose",
            "function": FUNCTION,
            "args": ARGS,
            "transient": TRANSIENT,
            "endorsingOrgs": ORGS,
            "eventsStartBlock": 7,
            "eventsAfterTxId": after_tx,
        },
    )

    # --- read the Node client's nonce and clock back from its bytes
    node_pt = gateway_pb2.ProposedTransaction.FromString(_b(out["proposedTransaction"]))
    node_prop = proposal_pb2.Proposal.FromString(node_pt.proposal.proposal_bytes)
    node_header = common_pb2.Header.FromString(node_prop.header)
    node_ch = common_pb2.ChannelHeader.FromString(node_header.channel_header)
    node_sh = common_pb2.SignatureHeader.FromString(node_header.signature_header)
    ts = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        seconds=node_ch.timestamp.seconds, microseconds=node_ch.timestamp.nanos // 1000
    )
    assert node_ch.timestamp.nanos % 1000 == 0  # millisecond clock: representable exactly
    assert len(node_sh.nonce) == 24

    p = build_proposal(
        ident,
        channel=CHANNEL,
        chaincode=CHAINCODE,
        function=FUNCTION,
        args=ARGS,
        nonce=node_sh.nonce,
        timestamp=ts,
        transient=TRANSIENT,
        endorsing_orgs=ORGS,
    )
    py_prop = proposal_pb2.Proposal.FromString(p.signed_proposal.proposal_bytes)
    py_header = common_pb2.Header.FromString(py_prop.header)

    # layer by layer, so a difference names the layer
    assert p.tx_id == out["transactionId"] == node_pt.transaction_id
    assert node_sh.creator == ident.creator
    assert py_header.channel_header == node_header.channel_header, "ChannelHeader"
    assert py_header.signature_header == node_header.signature_header, "SignatureHeader"
    assert py_prop.payload == node_prop.payload, "ChaincodeProposalPayload (incl. sorted TransientMap)"
    assert py_prop.header == node_prop.header, "Header"
    assert p.signed_proposal.proposal_bytes == node_pt.proposal.proposal_bytes, "Proposal bytes"
    assert hashlib.sha256(p.signed_proposal.proposal_bytes).digest() == _b(out["proposalDigest"])
    assert p.signed_proposal.signature == _b(out["proposalSignature"]), "deterministic low-S signature"
    unsigned = proposed_transaction(p)
    unsigned.proposal.signature = b""
    assert _ser(unsigned) == _b(out["proposedTransaction"]), "ProposedTransaction"

    # --- chaincode events requests: next commit, specified start block, checkpoint (block + after tx)
    variants = [
        chaincode_events_request(ident, channel=CHANNEL, chaincode=CHAINCODE),
        chaincode_events_request(ident, channel=CHANNEL, chaincode=CHAINCODE, start_block=7),
        chaincode_events_request(
            ident, channel=CHANNEL, chaincode=CHAINCODE, start_block=7, after_tx_id=after_tx
        ),
    ]
    for i, (mine, theirs) in enumerate(zip(variants, out["events"], strict=True)):
        node_signed = gateway_pb2.SignedChaincodeEventsRequest.FromString(_b(theirs["request"]))
        assert mine.request == node_signed.request, f"ChaincodeEventsRequest variant {i}"
        assert mine.signature == _b(theirs["signature"]), f"events signature variant {i}"

    # --- the rest of the flow through the official client, answered with canned responses
    _flow(node_ready, tmp_path, common, ident, p, out["proposedTransaction"])


def _flow(
    node: Path, tmp_path: Path, common: dict[str, Any], ident: SigningIdentity, p: Proposal, proposed_b64: str
) -> None:
    endorse_resp = endorse_response_for(p, result=b'{"minted":1000}')
    responses = {
        "/gateway.Gateway/Evaluate": base64.b64encode(
            _ser(gateway_pb2.EvaluateResponse(result={"status": 200, "payload": b"balance=42"}))
        ).decode(),
        "/gateway.Gateway/Endorse": base64.b64encode(_ser(endorse_resp)).decode(),
        "/gateway.Gateway/Submit": base64.b64encode(_ser(gateway_pb2.SubmitResponse())).decode(),
        "/gateway.Gateway/CommitStatus": base64.b64encode(
            _ser(gateway_pb2.CommitStatusResponse(result=0, block_number=5))
        ).decode(),
    }
    out = _node(
        node,
        tmp_path,
        {**common, "mode": "flow", "proposedTransaction": proposed_b64, "responses": responses},
    )
    cap = {k: _b(v) for k, v in out["captured"].items()}

    assert _b(out["evaluateResult"]) == b"balance=42"
    assert _ser(evaluate_request(p)) == cap["/gateway.Gateway/Evaluate"], "EvaluateRequest"
    assert _ser(endorse_request(p)) == cap["/gateway.Gateway/Endorse"], "EndorseRequest"

    prepared = parse_prepared(endorse_resp.prepared_transaction, expected=p)
    assert prepared.result == _b(out["result"]) == b'{"minted":1000}'
    assert hashlib.sha256(prepared.envelope.payload).digest() == _b(out["transactionDigest"]), (
        "envelope digest"
    )
    signed = sign_envelope(ident, prepared.envelope)
    assert _ser(submit_request(prepared, signed)) == cap["/gateway.Gateway/Submit"], (
        "SubmitRequest + signature"
    )

    csr = commit_status_request(ident, channel=CHANNEL, tx_id=p.tx_id)
    assert _ser(csr) == cap["/gateway.Gateway/CommitStatus"], "SignedCommitStatusRequest"
    node_commit = gateway_pb2.SignedCommitStatusRequest.FromString(_b(out["commitRequest"]))
    assert node_commit.request == csr.request
    assert hashlib.sha256(csr.request).digest() == _b(out["commitDigest"])
    assert out["status"] == {"blockNumber": "5", "code": 0, "successful": True}
