"""The official Node client (@hyperledger/fabric-gateway 1.11.0) against the emulator.

It must evaluate, submit, get commit status, read chaincode events and filtered blocks
(``network.getFilteredBlockEvents``, the peer's DeliverFiltered), and raise the same error
classes (GatewayError, EndorseError, SubmitError, CommitStatusError, CommitError) with the same gRPC
codes for the corresponding faults as against a real gateway. Keys come from a dev wallet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tooling import missing_tool
from waiting import wait_for

from gxsubmit.emulator import Emulator

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "emulator_check.mjs"
IDENTITIES = ("org1-super-admin", "org1-admin", "org1-partner-api")

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        missing_tool("node is not installed (Node.js 20 and npm)")
    if not (NODE_DIR / "node_modules" / "@hyperledger" / "fabric-gateway").exists():
        subprocess.run(
            ["npm", "install", "--omit=optional", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return exe


@pytest.fixture
def emulator(tmp_path: Path, wallet: Path) -> Iterator[Emulator]:
    emu = Emulator(wallet=wallet, ledger=tmp_path / "ledger.jsonl", block_time=0.05)
    emu.start()
    yield emu
    emu.stop()


def run_node(
    node: str, tmp_path: Path, wallet: Path, port: int, steps: list[dict[str, Any]], **extra: Any
) -> list[dict[str, Any]]:
    cfg = {
        "target": f"127.0.0.1:{port}",
        "mspId": "Org1MSP",
        "identities": {
            n: {"certPath": str(wallet / f"{n}-cert"), "keyPath": str(wallet / f"{n}-key")}
            for n in IDENTITIES
        },
        "steps": steps,
        **extra,
    }
    path = tmp_path / "node-config.json"
    path.write_text(json.dumps(cfg))
    out = subprocess.run([node, str(SCRIPT), str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


def user(name: str) -> list[str]:
    return [name, "ab" * 32, "NG", "30"]


def test_node_client_happy_path(node: str, tmp_path: Path, wallet: Path, emulator: Emulator) -> None:
    steps: list[dict[str, Any]] = [
        {
            "name": "create",
            "op": "submit",
            "identity": "org1-partner-api",
            "contract": "IdentityContract",
            "fn": "CreateUser",
            "args": user("n1"),
        },
        {
            "name": "genesis",
            "op": "submitTransaction",
            "identity": "org1-admin",
            "contract": "TokenomicsContract",
            "fn": "DistributeGenesis",
            "args": ["n1", "NG"],
        },
        {
            "name": "balance",
            "op": "evaluate",
            "identity": "org1-admin",
            "contract": "TokenomicsContract",
            "fn": "GetBalance",
            "args": ["n1"],
        },
        {"name": "events", "op": "events", "startBlock": 0, "count": 2},
    ]
    create, genesis, balance, events = run_node(node, tmp_path, wallet, emulator.port, steps)
    assert create["ok"] and create["successful"] and create["code"] == 0 and create["blockNumber"] >= 1
    assert json.loads(create["result"])["userId"] == "n1"
    assert genesis["ok"] and json.loads(genesis["result"])["balance"] == "1000"
    assert balance["ok"] and json.loads(balance["result"])["balance"] == "1000"
    assert events["ok"]
    assert [e["eventName"] for e in events["events"]] == ["UserCreated", "GenesisDistributed"]
    assert events["events"][0]["transactionId"] == create["transactionId"]
    assert events["events"][0]["blockNumber"] == create["blockNumber"]
    # Checkpoint (after_transaction_id): resumes after the first event.
    (resumed,) = run_node(
        node,
        tmp_path,
        wallet,
        emulator.port,
        [
            {
                "name": "resume",
                "op": "events",
                "count": 1,
                "afterTx": {"blockNumber": create["blockNumber"], "transactionId": create["transactionId"]},
            },
        ],
    )
    assert [e["eventName"] for e in resumed["events"]] == ["GenesisDistributed"]
    lines = [json.loads(x) for x in emulator.ledger_path.read_text().splitlines()]
    assert [x["tx_id"] for x in lines][:1] == [create["transactionId"]]


def test_node_client_error_classes(node: str, tmp_path: Path, wallet: Path, emulator: Emulator) -> None:
    f = emulator.faults
    base = {"identity": "org1-partner-api", "contract": "IdentityContract", "fn": "CreateUser"}
    # Chaincode errors: EndorseError ABORTED with the peer's detail; GatewayError UNKNOWN on evaluate.
    denied, evaluate_err = run_node(
        node,
        tmp_path,
        wallet,
        emulator.port,
        [
            {
                "name": "denied",
                "op": "submit",
                "identity": "org1-partner-api",
                "contract": "TokenomicsContract",
                "fn": "Mint",
                "args": ["n", "1", ""],
            },
            {
                "name": "eval",
                "op": "evaluate",
                "identity": "org1-admin",
                "contract": "TokenomicsContract",
                "fn": "GetBalance",
                "args": [],
            },
        ],
    )
    assert denied["errorClass"] == "EndorseError" and denied["code"] == 10
    assert denied["details"] == [
        {
            "address": "peer0.org1.example.com:7051",
            "mspId": "Org1MSP",
            "message": "chaincode response 403, access denied: caller role gx_partner_api, "
            "required gx_super_admin",
        }
    ]
    assert evaluate_err["errorClass"] == "GatewayError" and evaluate_err["code"] == 2
    assert "Expected 1 parameters" in evaluate_err["details"][0]["message"]

    f.submit_unavailable = 1.0
    (sub,) = run_node(
        node, tmp_path, wallet, emulator.port, [{"name": "s", "op": "submit", **base, "args": user("e1")}]
    )
    f.submit_unavailable = 0.0
    assert (
        sub["errorClass"] == "SubmitError"
        and sub["code"] == 14
        and sub["details"][0]["mspId"] == "OrdererMSP"
    )

    f.commit_status_unavailable = 1.0
    (cs,) = run_node(
        node, tmp_path, wallet, emulator.port, [{"name": "c", "op": "submit", **base, "args": user("e2")}]
    )
    f.commit_status_unavailable = 0.0
    assert cs["errorClass"] == "CommitStatusError" and cs["code"] == 14

    f.mvcc = 1.0
    (mvcc,) = run_node(
        node,
        tmp_path,
        wallet,
        emulator.port,
        [{"name": "m", "op": "submitTransaction", **base, "args": user("e3")}],
    )
    f.mvcc = 0.0
    assert mvcc["errorClass"] == "CommitError" and mvcc["code"] == 11  # MVCC_READ_CONFLICT

    f.policy_failure = 1.0
    (pol,) = run_node(
        node, tmp_path, wallet, emulator.port, [{"name": "p", "op": "submit", **base, "args": user("e4")}]
    )
    f.policy_failure = 0.0
    assert pol["ok"] and pol["successful"] is False and pol["code"] == 10  # ENDORSEMENT_POLICY_FAILURE

    f.endorse_timeout = 1.0
    (slow,) = run_node(
        node,
        tmp_path,
        wallet,
        emulator.port,
        [{"name": "t", "op": "submit", **base, "args": user("e5")}],
        deadlinesMs={"endorse": 300},
    )
    f.endorse_timeout = 0.0
    assert slow["errorClass"] == "EndorseError" and slow["code"] == 4  # DEADLINE_EXCEEDED

    f.outage(600)
    (down,) = run_node(
        node, tmp_path, wallet, emulator.port, [{"name": "o", "op": "submit", **base, "args": user("e6")}]
    )
    f.outage_until = 0.0
    assert down["errorClass"] == "EndorseError" and down["code"] == 14

    # Lost ack: SubmitError UNAVAILABLE, yet the transaction is on the ledger as VALID.
    f.submit_lost_ack = 1.0
    (lost,) = run_node(
        node, tmp_path, wallet, emulator.port, [{"name": "l", "op": "submit", **base, "args": user("e7")}]
    )
    f.submit_lost_ack = 0.0
    assert lost["errorClass"] == "SubmitError" and lost["code"] == 14
    index = emulator._core.ledger.index  # type: ignore[union-attr]  # set once serving
    wait_for(lambda: lost["transactionId"] in index, timeout=10)
    assert index[lost["transactionId"]].code == 0


def test_node_client_over_tls(node: str, tmp_path: Path, wallet: Path) -> None:
    emu = Emulator(wallet=wallet, ledger=tmp_path / "tls-ledger.jsonl", block_time=0.05, insecure=False)
    port = emu.start()
    try:
        (res,) = run_node(
            node,
            tmp_path,
            wallet,
            port,
            [
                {
                    "name": "tls",
                    "op": "submit",
                    "identity": "org1-partner-api",
                    "contract": "IdentityContract",
                    "fn": "CreateUser",
                    "args": user("tls"),
                },
            ],
            tlsCaPath=str(wallet / "tlsca-cert"),
        )
    finally:
        emu.stop()
    assert res["ok"] and res["successful"], res


def test_node_client_filtered_block_events(
    node: str, tmp_path: Path, wallet: Path, emulator: Emulator
) -> None:
    create = {
        "op": "submit",
        "identity": "org1-partner-api",
        "contract": "IdentityContract",
        "fn": "CreateUser",
    }
    (first,) = run_node(node, tmp_path, wallet, emulator.port, [{"name": "a", **create, "args": user("fb1")}])
    assert first["ok"] and first["successful"], first
    start = first["blockNumber"] + 1  # the block the next transaction will be in: no race with the seek
    follow, replay, beyond = run_node(
        node,
        tmp_path,
        wallet,
        emulator.port,
        [
            {
                "name": "follow",
                "op": "filteredBlocks",
                "startBlock": start,
                "submit": {"name": "b", **create, "args": user("fb2")},
            },
            {"name": "replay", "op": "filteredBlocks", "startBlock": 0, "count": 2},
            {"name": "beyond", "op": "filteredBlocks", "startBlock": 1000},
        ],
    )
    assert follow["ok"], follow
    sub = follow["submitted"]
    assert sub["ok"] and sub["successful"] and sub["blockNumber"] == start
    (block,) = follow["blocks"]
    assert block["number"] == start and block["channelId"] == "gxchannel"
    assert block["transactions"] == [
        {
            "txId": sub["transactionId"],
            "type": 3,  # ENDORSER_TRANSACTION
            "code": 0,  # VALID
            "hasActions": True,
            "events": [{"chaincodeId": "gxtv3", "txId": sub["transactionId"], "eventName": "UserCreated"}],
        }
    ]
    assert replay["ok"], replay
    genesis, b1 = replay["blocks"]
    assert genesis["number"] == 0 and [(t["type"], t["code"]) for t in genesis["transactions"]] == [(1, 0)]
    assert b1["number"] == first["blockNumber"] == 1
    assert [t["txId"] for t in b1["transactions"]] == [first["transactionId"]]
    # A start beyond the ledger: the peer answers with a NOT_FOUND status, which the client raises.
    assert not beyond["ok"] and "Unexpected status response: 404" in beyond["message"], beyond


def test_node_client_queries_qscc_for_a_transaction(
    node: str, tmp_path: Path, wallet: Path, emulator: Emulator
) -> None:
    # qscc GetTransactionByID, as the worker uses it for a lost tx id of an expired certificate.
    step = {"name": "create", "op": "submit", "contract": "IdentityContract", "fn": "CreateUser"}
    (create,) = run_node(node, tmp_path, wallet, emulator.port, [{**step, "args": user("q1")}])
    assert create["ok"] and create["successful"]
    missing = "00" * 32

    def qscc(name: str, tx_id: str) -> dict[str, Any]:
        return {"name": name, "op": "evaluate", "chaincode": "qscc", "fn": "GetTransactionByID",
                "args": ["gxchannel", tx_id]}

    found, lacks = run_node(node, tmp_path, wallet, emulator.port,
                            [qscc("found", create["transactionId"]), qscc("lacks", missing)])
    assert found["ok"], found
    assert not lacks["ok"] and lacks["isGatewayError"] and lacks["code"] == 2  # UNKNOWN
    assert f"no such transaction ID [{missing}] in index" in lacks["message"]
    assert any(f"no such transaction ID [{missing}]" in d["message"] for d in lacks["details"])
