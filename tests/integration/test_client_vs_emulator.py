"""GatewayClient against the emulator over real sockets (TLS and plaintext), one test per error class.

Every error a fault provokes must come out classified (TRANSIENT, CONFLICT, PERMANENT, DUPLICATE,
IN_DOUBT) with a stable error_code and the gateway's details in its message.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gxsubmit.emulator import Emulator
from gxsubmit.fabric.client import Deadlines, GatewayClient
from gxsubmit.fabric.codes import classify_validation_code
from gxsubmit.fabric.errors import ErrorClass, FabricError
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import Proposal, build_proposal, new_nonce
from gxsubmit.wallet import DEFAULT_IDENTITIES, load_identity, load_tls_ca, load_tls_client

CHANNEL, CHAINCODE = "gxchannel", "gxtv3"
ORGS = ("Org1MSP", "Org2MSP")
FAST = Deadlines(evaluate=5.0, endorse=5.0, submit=5.0, commit_status=10.0)


@dataclass
class Env:
    wallet: Path
    emulator: Emulator
    port: int
    tls: bool

    def identity(self, name: str) -> SigningIdentity:
        wi = load_identity(self.wallet, name, msp_id="Org1MSP", expected_role=DEFAULT_IDENTITIES[name])
        return SigningIdentity.from_wallet(wi)

    def client(
        self,
        deadlines: Deadlines = FAST,
        *,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
    ) -> GatewayClient:
        target = f"127.0.0.1:{self.port}"
        if self.tls:
            return GatewayClient(
                target=target,
                tls_root=load_tls_ca(self.wallet),
                server_name="localhost",
                deadlines=deadlines,
                client_cert=client_cert,
                client_key=client_key,
            )
        return GatewayClient(target=target, tls_root=None, deadlines=deadlines)


@pytest.fixture(scope="module", params=["tls", "plaintext"])
def env(
    request: pytest.FixtureRequest, wallet: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    tls = request.param == "tls"
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.jsonl"
    emu = Emulator(wallet=wallet, ledger=ledger, insecure=not tls, block_time=0.05, seed=7)
    port = emu.start()
    try:
        yield Env(wallet=wallet, emulator=emu, port=port, tls=tls)
    finally:
        emu.stop()


@pytest.fixture(autouse=True)
def _healthy(env: Env) -> Iterator[None]:
    env.emulator.faults.clear()
    yield
    env.emulator.faults.clear()


@pytest.fixture
async def client(env: Env) -> AsyncIterator[GatewayClient]:
    c = env.client()
    await c.wait_ready(10.0)
    try:
        yield c
    finally:
        await c.close()


def _proposal(ident: SigningIdentity, function: str, args: list[str], *, channel: str = CHANNEL,
              endorsing_orgs: Sequence[str] = (), nonce: bytes | None = None) -> Proposal:
    """A proposal to the test chaincode (a fresh nonce unless given)."""
    return build_proposal(ident, channel=channel, chaincode=CHAINCODE, function=function, args=args,
                          nonce=nonce or new_nonce(), endorsing_orgs=endorsing_orgs)


def _mint(ident: SigningIdentity, user: str, amount: str = "10", nonce: bytes | None = None) -> Proposal:
    return _proposal(ident, "TokenomicsContract:Mint", [user, amount, "test"], endorsing_orgs=ORGS,
                     nonce=nonce)


def _user() -> str:
    return f"user-{new_nonce().hex()[:12]}"


async def test_submit_flow_evaluate_and_events(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    user = _user()
    p = _mint(su, user, "25")
    prepared = await client.endorse(p)
    assert prepared.tx_id == p.tx_id and prepared.channel == CHANNEL
    assert json.loads(prepared.result)["balance"] == "25"
    await client.submit(su, prepared)
    res = await client.commit_status(su, channel=CHANNEL, tx_id=p.tx_id)
    assert (res.code, res.code_name, res.valid) == (0, "VALID", True) and res.block_number >= 0

    q = _proposal(su, "TokenomicsContract:GetBalance", [user], endorsing_orgs=ORGS)
    assert json.loads(await client.evaluate(q))["balance"] == "25"

    # events from the commit block: our tx is there; resuming after it skips it
    stream = client.chaincode_events(
        su, channel=CHANNEL, chaincode=CHAINCODE, start_block=res.block_number, timeout=10.0
    )
    block = await anext(stream)
    await stream.aclose()
    assert block.block_number == res.block_number
    assert any(e.tx_id == p.tx_id and e.event_name == "TokensMinted" for e in block.events)

    p2 = _mint(su, user, "5")
    await client.submit(su, await client.endorse(p2))
    res2 = await client.commit_status(su, channel=CHANNEL, tx_id=p2.tx_id)
    stream = client.chaincode_events(
        su,
        channel=CHANNEL,
        chaincode=CHAINCODE,
        start_block=res.block_number,
        after_tx_id=p.tx_id,
        timeout=10.0,
    )
    seen: list[str] = []
    async for blk in stream:
        seen += [e.tx_id for e in blk.events]
        if p2.tx_id in seen:
            break
    await stream.aclose()
    assert p.tx_id not in seen and p2.tx_id in seen and res2.valid


async def test_duplicate_after_commit(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    nonce = new_nonce()
    p = _mint(su, _user(), nonce=nonce)
    await client.submit(su, await client.endorse(p))
    first = await client.commit_status(su, channel=CHANNEL, tx_id=p.tx_id)
    again = _mint(su, "someone-else", nonce=nonce)  # stored nonce -> same tx id
    assert again.tx_id == p.tx_id
    with pytest.raises(FabricError) as info:
        await client.endorse(again)
    err = info.value
    assert (err.error_class, err.error_code, err.stage, err.grpc_code) == (
        ErrorClass.DUPLICATE,
        "DUPLICATE_TXID",
        "endorse",
        "ABORTED",
    )
    assert err.details and "duplicate transaction found" in str(err) and err.tx_id == p.tx_id
    assert err.details[0].msp_id == "Org1MSP" and err.details[0].address
    assert (await client.commit_status(su, channel=CHANNEL, tx_id=p.tx_id)) == first


async def test_resubmitting_the_same_envelope_gives_duplicate_txid_and_first_outcome(
    env: Env, client: GatewayClient
) -> None:
    su = env.identity("org1-super-admin")
    p = _mint(su, _user())
    prepared = await client.endorse(p)
    await client.submit(su, prepared)
    first = await client.commit_status(su, channel=CHANNEL, tx_id=p.tx_id)
    await client.submit(su, prepared)  # the orderer does not check duplicates
    assert await client.commit_status(su, channel=CHANNEL, tx_id=p.tx_id) == first
    assert classify_validation_code(9) is ErrorClass.DUPLICATE


async def test_role_denied_is_permanent_with_details(env: Env, client: GatewayClient) -> None:
    partner = env.identity("org1-partner-api")
    with pytest.raises(FabricError) as info:
        await client.endorse(_mint(partner, _user()))
    err = info.value
    assert (err.error_class, err.error_code) == (ErrorClass.PERMANENT, "ROLE_DENIED")
    assert "access denied" in str(err) and "[details: " in str(err) and "(Org1MSP)" in str(err)


async def test_chaincode_error_is_permanent(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    bad = _proposal(su, "TokenomicsContract:Mint", ["only-one"], endorsing_orgs=ORGS)
    with pytest.raises(FabricError) as info:
        await client.endorse(bad)
    assert (info.value.error_class, info.value.error_code) == (ErrorClass.PERMANENT, "CHAINCODE_ERROR")
    assert "Expected 3 parameters" in str(info.value)
    with pytest.raises(FabricError) as info2:
        await client.evaluate(bad)
    assert info2.value.error_class is ErrorClass.PERMANENT and info2.value.stage == "evaluate"


async def test_endorse_unavailable_is_transient(env: Env, client: GatewayClient) -> None:
    env.emulator.faults.endorse_unavailable = 1.0
    su = env.identity("org1-super-admin")
    p = _mint(su, _user())
    with pytest.raises(FabricError) as info:
        await client.endorse(p)
    assert (info.value.error_class, info.value.error_code) == (ErrorClass.TRANSIENT, "GATEWAY_UNAVAILABLE")
    env.emulator.faults.endorse_unavailable = 0.0
    # the same signed proposal is endorsed fine afterwards (nothing reached the ledger)
    assert (await client.endorse(p)).tx_id == p.tx_id


async def test_endorse_deadline_is_transient(env: Env) -> None:
    env.emulator.faults.endorse_timeout = 1.0
    c = env.client(Deadlines(endorse=0.3))
    try:
        with pytest.raises(FabricError) as info:
            await c.endorse(_mint(env.identity("org1-super-admin"), _user()))
    finally:
        await c.close()
    assert (info.value.error_class, info.value.error_code, info.value.grpc_code) == (
        ErrorClass.TRANSIENT,
        "DEADLINE_EXCEEDED",
        "DEADLINE_EXCEEDED",
    )


async def test_submit_unavailable_is_in_doubt(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    prepared = await client.endorse(_mint(su, _user()))
    env.emulator.faults.submit_unavailable = 1.0
    with pytest.raises(FabricError) as info:
        await client.submit(su, prepared)
    err = info.value
    assert (err.error_class, err.error_code, err.stage) == (
        ErrorClass.IN_DOUBT,
        "GATEWAY_UNAVAILABLE",
        "submit",
    )
    assert "no orderers could successfully process transaction" in str(err) and "[details: " in str(err)
    env.emulator.faults.submit_unavailable = 0.0
    await client.submit(su, prepared)  # resubmit the same envelope: same tx id
    assert (await client.commit_status(su, channel=CHANNEL, tx_id=prepared.tx_id)).valid


async def test_lost_ack_is_in_doubt_but_committed(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    prepared = await client.endorse(_mint(su, _user()))
    env.emulator.faults.submit_lost_ack = 1.0
    with pytest.raises(FabricError) as info:
        await client.submit(su, prepared)
    assert info.value.error_class is ErrorClass.IN_DOUBT
    env.emulator.faults.submit_lost_ack = 0.0
    assert (await client.commit_status(su, channel=CHANNEL, tx_id=prepared.tx_id)).valid


async def test_submit_deadline_is_in_doubt(env: Env) -> None:
    c = env.client(Deadlines(submit=0.3))
    su = env.identity("org1-super-admin")
    try:
        prepared = await c.endorse(_mint(su, _user()))
        env.emulator.faults.submit_timeout = 1.0
        with pytest.raises(FabricError) as info:
            await c.submit(su, prepared)
    finally:
        await c.close()
    assert (info.value.error_class, info.value.error_code) == (ErrorClass.IN_DOUBT, "DEADLINE_EXCEEDED")


async def test_commit_status_failures_are_in_doubt(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    env.emulator.faults.commit_status_unavailable = 1.0
    with pytest.raises(FabricError) as info:
        await client.commit_status(su, channel=CHANNEL, tx_id="00" * 32)
    assert info.value.error_class is ErrorClass.IN_DOUBT and info.value.stage == "commit_status"
    env.emulator.faults.commit_status_unavailable = 0.0
    with pytest.raises(FabricError) as info2:  # unknown tx: blocks until our deadline
        await client.commit_status(su, channel=CHANNEL, tx_id="11" * 32, timeout=0.3)
    assert (info2.value.error_class, info2.value.error_code) == (ErrorClass.IN_DOUBT, "DEADLINE_EXCEEDED")


async def test_mvcc_is_conflict_and_policy_failure_permanent(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    env.emulator.faults.mvcc = 1.0
    p = _mint(su, _user())
    await client.submit(su, await client.endorse(p))
    res = await client.commit_status(su, channel=CHANNEL, tx_id=p.tx_id)
    assert res.code_name == "MVCC_READ_CONFLICT" and classify_validation_code(res.code) is ErrorClass.CONFLICT
    env.emulator.faults.mvcc = 0.0
    env.emulator.faults.policy_failure = 1.0
    p2 = _mint(su, _user())
    await client.submit(su, await client.endorse(p2))
    res2 = await client.commit_status(su, channel=CHANNEL, tx_id=p2.tx_id)
    assert res2.code_name == "ENDORSEMENT_POLICY_FAILURE"
    assert classify_validation_code(res2.code) is ErrorClass.PERMANENT


async def test_outage_is_transient_for_evaluate(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    env.emulator.faults.outage(30.0)
    q = _proposal(su, "TokenomicsContract:GetBalance", ["x"])
    with pytest.raises(FabricError) as info:
        await client.evaluate(q)
    assert (info.value.error_class, info.value.error_code) == (ErrorClass.TRANSIENT, "GATEWAY_UNAVAILABLE")


async def test_wrong_channel_is_permanent(env: Env, client: GatewayClient) -> None:
    su = env.identity("org1-super-admin")
    p = _proposal(su, "TokenomicsContract:Mint", ["u", "1", ""], channel="nochannel")
    with pytest.raises(FabricError) as info:
        await client.endorse(p)
    assert info.value.error_class is ErrorClass.PERMANENT and "nochannel" in str(info.value)


async def test_connect_failure_is_transient() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = GatewayClient(target=f"127.0.0.1:{port}", tls_root=None)
    try:
        with pytest.raises(FabricError) as info:
            await c.wait_ready(0.5)
    finally:
        await c.close()
    assert (info.value.stage, info.value.error_class, info.value.error_code) == (
        "connect",
        ErrorClass.TRANSIENT,
        "GATEWAY_UNAVAILABLE",
    )


@pytest.mark.parametrize("env", ["tls"], indirect=True)
async def test_tls_name_mismatch_and_client_certificate(env: Env) -> None:
    assert env.tls
    root = load_tls_ca(env.wallet)
    bad = GatewayClient(target=f"127.0.0.1:{env.port}", tls_root=root, server_name="peer0.other.example.com")
    try:
        with pytest.raises(FabricError):
            await bad.wait_ready(1.0)
    finally:
        await bad.close()
    pair = load_tls_client(env.wallet)
    assert pair is not None
    good = env.client(client_cert=pair[0], client_key=pair[1])
    try:
        await good.wait_ready(5.0)
        su = env.identity("org1-super-admin")
        q = _proposal(su, "TokenomicsContract:GetBalance", ["nobody"])
        assert json.loads(await good.evaluate(q))["balance"] == "0"
    finally:
        await good.close()


async def test_transaction_known_asks_the_ledger(env: Env, client: GatewayClient, tmp_path: Path) -> None:
    # A committed tx id is known, whatever its code; a made-up one is positively absent; a refusal (here
    # an identity from another CA) raises instead of reading as "absent".
    su = env.identity("org1-super-admin")
    p = _mint(su, _user())
    await client.submit(su, await client.endorse(p))
    assert (await client.commit_status(su, channel=CHANNEL, tx_id=p.tx_id)).valid
    assert await client.transaction_known(su, channel=CHANNEL, tx_id=p.tx_id)
    assert not await client.transaction_known(su, channel=CHANNEL, tx_id=new_nonce().hex() + "00" * 8)
    from gxsubmit.devwallet import make_dev_wallet

    make_dev_wallet(tmp_path / "other")
    stranger = SigningIdentity.from_wallet(
        load_identity(tmp_path / "other", "org1-admin", msp_id="Org1MSP", expected_role=None))
    with pytest.raises(FabricError) as caught:
        await client.transaction_known(stranger, channel=CHANNEL, tx_id=p.tx_id)
    assert "access denied" in str(caught.value)
