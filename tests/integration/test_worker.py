"""The worker as a real process against real PostgreSQL and the emulator over a real socket.

Every scenario ends with the ledger audit (tests/audit.py): exactly one VALID transaction per
command, and it is the one the outbox row recorded.
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from audit import ArgsKey, args_key, audit_exactly_once, outbox_rows, read_ledger
from dbutil import run_sync
from psycopg import sql
from waiting import wait_for

from gxsubmit.catalog import load_catalog
from gxsubmit.config import Config
from gxsubmit.devwallet import make_dev_wallet
from gxsubmit.emulator import Emulator
from gxsubmit.outbox import enqueue
from gxsubmit.workerstatus import WorkerStatus

IDENTITIES = ("org1-super-admin", "org1-admin", "org1-partner-api")
BIO = "ab" * 32


@dataclass
class Harness:
    tmp: Path
    url: str
    schema: str
    emu: Emulator
    port: int
    catalog_path: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    expected: dict[uuid.UUID, ArgsKey] = field(default_factory=dict)

    @property
    def wallet(self) -> Path:
        return self.tmp / "wallet"

    @property
    def ledger(self) -> Path:
        return self.tmp / "ledger.jsonl"

    def config(self, **overrides: Any) -> Config:
        base: dict[str, Any] = dict(
            database_url=self.url, schema=self.schema, gateway=f"127.0.0.1:{self.port}", wallet=self.wallet,
            insecure=True, runtime_dir=self.tmp / "run", poll_interval=0.5, drain_timeout=5.0,
            backoff_base=0.05, backoff_cap=1.0, lease_seconds=30.0, catalog=self.catalog_path,
            log_level="info",
        )
        base.update(overrides)
        return Config(**base)

    def spawn(self, identity: str, **overrides: Any) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
        env.update(self.config(**overrides).to_env())
        log = open(self.tmp / f"worker-{identity}-{len(self.procs)}.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", "gxsubmit", "worker", "--identity", identity],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(p)
        return p

    def enqueue(self, items: list[tuple[str, dict[str, Any]]], order_keys: Sequence[str | None] | None = None
                ) -> list[uuid.UUID]:
        cat = load_catalog(self.catalog_path)
        keys = order_keys or [None] * len(items)

        async def go() -> list[uuid.UUID]:
            out = []
            async with await psycopg.AsyncConnection.connect(self.url) as conn:
                async with conn.transaction():
                    for (ctype, payload), key in zip(items, keys, strict=True):
                        cid, _ = await enqueue(conn, command_type=ctype, payload=payload, schema=self.schema,
                                               order_key=key)
                        out.append(cid)
                        route = cat.route(ctype)
                        if route is not None:
                            try:
                                self.expected[cid] = args_key(route.function, route.build_args(payload))
                            except ValueError:
                                pass
            return out

        return run_sync(go())

    def rows(self) -> dict[uuid.UUID, dict[str, Any]]:
        return outbox_rows(self.url, self.schema)

    def status(self, identity: str) -> dict[str, Any] | None:
        try:
            data = (self.tmp / "run" / f"worker-{identity}.json").read_bytes()
        except FileNotFoundError:
            return None
        # Parsed the way the supervisor parses it: every worker test checks the status-file contract.
        return asdict(WorkerStatus.from_json(data))

    def all_final(self, ids: Any = None) -> bool:
        rows = self.rows()
        wanted = rows if ids is None else {i: rows[i] for i in ids}
        return all(r["status"] in ("COMMITTED", "FAILED") for r in wanted.values())

    def audit(self, ids: Any = None, **kw: Any) -> None:
        expected = self.expected if ids is None else {i: self.expected[i] for i in ids}
        report = audit_exactly_once(self.ledger, expected, self.rows(), **kw)
        assert report.ok, str(report) + "\n" + self.logs()[-4000:]

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("worker-*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def emu_opts() -> dict[str, Any]:
    """Emulator constructor options; a test overrides with ``@pytest.mark.parametrize("emu_opts", ...)``."""
    return {}


@pytest.fixture
def h(pg_url: str, schema: str, tmp_path: Path, emu_opts: dict[str, Any]) -> Iterator[Harness]:
    make_dev_wallet(tmp_path / "wallet")
    emu = Emulator(wallet=tmp_path / "wallet", ledger=tmp_path / "ledger.jsonl",
                   **{"block_time": 0.1, **emu_opts})
    port = emu.start()
    harness = Harness(tmp=tmp_path, url=pg_url, schema=schema, emu=emu, port=port)
    try:
        yield harness
    finally:
        for p in harness.procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        emu.stop()


def _user(tag: str) -> tuple[str, dict[str, Any]]:
    return "CREATE_USER", {"userId": f"user-{tag}-{uuid.uuid4().hex[:8]}", "biometricHash": BIO,
                           "nationality": "KE", "age": 30}


def _mint(tag: str, to: str | None = None, amount: int = 1) -> tuple[str, dict[str, Any]]:
    return "MINT", {"toUserId": to or f"acct-{uuid.uuid4().hex[:8]}", "amount": amount,
                    "remark": f"mint-{tag}-{uuid.uuid4().hex[:8]}"}


def _genesis(tag: str) -> tuple[str, dict[str, Any]]:
    return "DISTRIBUTE_GENESIS", {"userId": f"gen-{tag}-{uuid.uuid4().hex[:8]}", "nationality": "KE"}


def _locked_by_pid(rows: Mapping[uuid.UUID, Mapping[str, Any]], pid: int) -> list[uuid.UUID]:
    return [i for i, r in rows.items()
            if r["status"] in ("CLAIMED", "SUBMITTED") and str(r["locked_by"] or "").endswith(f":{pid}")]


# ----------------------------------------------------------------------------------------------


def test_each_identity_commits_once(h: Harness) -> None:
    ids = h.enqueue([_user("a"), _user("b"), _mint("a"), _genesis("a")])
    for ident in IDENTITIES:
        h.spawn(ident)
    wait_for(lambda: h.all_final(ids), 30, 0.1, "all rows final")
    rows = h.rows()
    for i in ids:
        assert rows[i]["status"] == "COMMITTED", rows[i]
        assert rows[i]["fabric_tx_id"] and rows[i]["commit_block"] is not None
        assert rows[i]["validation_code"] == "VALID"
    h.audit(ids)
    # The ledger's creator for each command is the identity the catalogue routes it to.
    by_tx = {t["tx_id"]: t for t in read_ledger(h.ledger)}
    roles = {rows[i]["command_type"]: by_tx[rows[i]["fabric_tx_id"]]["role"] for i in ids}
    assert roles == {"CREATE_USER": "gx_partner_api", "MINT": "gx_super_admin",
                     "DISTRIBUTE_GENESIS": "gx_admin"}
    for ident in IDENTITIES:
        st = wait_for(functools.partial(h.status, ident), 10, 0.05, "status file")
        assert st["ready"] and st["db_ok"] and st["gateway_ok"] and not st["breaker_open"], st
    h.stop_all()
    assert [p.returncode for p in h.procs] == [0, 0, 0]
    log = h.logs()
    for ident in IDENTITIES:
        assert f"Successfully connected Fabric client for {ident}" in log
    assert '"message":"Processing command"' in log


@pytest.mark.parametrize("emu_opts", [{"block_time": 0.5}])
def test_sigkill_mid_flight_then_restart_is_exactly_once(h: Harness) -> None:
    h.emu.faults.latency_s = {"Endorse": (0.1, 0.6), "Submit": (0.2, 0.8)}
    ids = h.enqueue([_user(str(n)) for n in range(500)])
    p = h.spawn("org1-partner-api", lease_seconds=2.0, max_in_flight=256)

    def busy() -> bool:
        held = [r["status"] for r in h.rows().values() if r["status"] in ("CLAIMED", "SUBMITTED")]
        return len(held) >= 100 and "SUBMITTED" in held

    wait_for(busy, 30, 0.02, "hundreds in flight, some submitted")
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    h.emu.faults.latency_s = {}
    mid = h.rows()
    assert any(r["status"] in ("CLAIMED", "SUBMITTED") for r in mid.values())
    h.spawn("org1-partner-api", lease_seconds=2.0)
    wait_for(lambda: h.all_final(ids), 60, 0.2, "all rows final after restart")
    h.audit(ids)
    taken_over = [r for r in h.rows().values() if r["attempts"] >= 2]
    assert taken_over, "the restarted worker took over expired leases (attempt counted)"


@pytest.mark.parametrize("commit_events", [True, False], ids=["block-stream", "commit-status"])
def test_lost_acks_and_commit_status_faults_stay_exactly_once(h: Harness, commit_events: bool) -> None:
    h.emu.faults.submit_lost_ack = 0.3
    h.emu.faults.commit_status_unavailable = 0.3
    ids = h.enqueue([_user(str(n)) for n in range(60)] + [_mint(str(n)) for n in range(20)])
    h.spawn("org1-partner-api", max_attempts=3, commit_events=commit_events)
    h.spawn("org1-super-admin", max_attempts=3, commit_events=commit_events)
    wait_for(lambda: h.all_final(ids), 60, 0.2, "all rows final")
    assert h.emu.stats()["lost_acks"] > 0
    h.audit(ids)
    # A lost ack re-submits the same tx id: the ledger holds the second copy as DUPLICATE_TXID at most.
    codes = {t["validation_code"] for t in read_ledger(h.ledger)}
    assert codes <= {"VALID", "DUPLICATE_TXID"}


def test_commits_are_learnt_from_the_block_stream(h: Harness) -> None:
    ids = h.enqueue([_user(str(n)) for n in range(40)])
    h.spawn("org1-partner-api")
    wait_for(lambda: h.all_final(ids), 30, 0.1, "all rows final")
    h.audit(ids)
    stats = h.emu.stats()
    assert stats["deliver_seeks"] >= 1 and stats["deliver_blocks"] >= 1, stats
    # every commit came off the stream: not one CommitStatus call for 40 submitted transactions
    assert stats["rpcs"].get("CommitStatus", 0) == 0, stats
    assert stats["rpcs"]["Submit"] >= 40, stats
    st = wait_for(lambda: h.status("org1-partner-api"), 10, 0.05, "status file")
    assert st["commit_stream"] is True, st


def test_commit_status_per_transaction_when_the_stream_is_off(h: Harness) -> None:
    ids = h.enqueue([_user(str(n)) for n in range(10)])
    h.spawn("org1-partner-api", commit_events=False)
    wait_for(lambda: h.all_final(ids), 30, 0.1, "all rows final")
    h.audit(ids)
    stats = h.emu.stats()
    assert stats["deliver_seeks"] == 0 and stats["rpcs"]["CommitStatus"] >= 10, stats
    st = h.status("org1-partner-api")
    assert st is not None and st["commit_stream"] is False, st


@pytest.mark.parametrize("emu_opts", [{"insecure": False, "client_tls": True}])
def test_block_stream_over_mutual_tls_is_bound_to_the_client_certificate(h: Harness) -> None:
    """The emulator requires a client certificate and checks each seek's tls_cert_hash against it, as a
    peer with clientAuthRequired does; the worker takes the pair from the wallet (client-tls-cert)."""
    ids = h.enqueue([_user(str(n)) for n in range(10)])
    h.spawn("org1-partner-api", insecure=False)
    wait_for(lambda: h.all_final(ids), 30, 0.1, "all rows final")
    h.audit(ids)
    stats = h.emu.stats()
    assert stats["deliver_seeks"] >= 1 and stats.get("deliver_status_400", 0) == 0, stats
    st = wait_for(lambda: (h.status("org1-partner-api") or {}).get("commit_stream") and h.status(
        "org1-partner-api"), 10, 0.05, "stream live")
    assert st["commit_stream"] is True


@pytest.mark.parametrize("emu_opts", [{"block_time": 3.0}])
def test_a_commit_slower_than_the_timeout_goes_to_commit_status(h: Harness) -> None:
    h.spawn("org1-partner-api", commit_timeout=1.0, backoff_base=0.1, backoff_cap=0.5)
    wait_for(lambda: (h.status("org1-partner-api") or {}).get("commit_stream"), 20, 0.05, "stream live")
    ids = h.enqueue([_user(str(n)) for n in range(5)])
    wait_for(lambda: h.all_final(ids), 60, 0.1, "all rows final")
    h.audit(ids)
    stats = h.emu.stats()
    # the stream's wait ran out before the 3 s block: CommitStatus was asked (and, with a 1 s deadline,
    # timed out too, so the row was retried in doubt with the same tx id until its block came)
    assert stats["rpcs"]["CommitStatus"] >= 5, stats
    assert {r["status"] for r in h.rows().values()} == {"COMMITTED"}


@pytest.mark.parametrize("emu_opts", [{"block_time": 1.0}])  # rows sit in COMMIT_WAIT when the stream breaks
def test_block_stream_loss_falls_back_and_resumes(h: Harness) -> None:
    p = h.spawn("org1-partner-api", backoff_base=0.1, backoff_cap=1.0, breaker_cooldown=0.5)
    wait_for(lambda: (h.status("org1-partner-api") or {}).get("commit_stream"), 20, 0.05, "stream live")
    first = h.enqueue([_user(f"a{n}") for n in range(50)])
    wait_for(lambda: sum(r["status"] == "SUBMITTED" for r in h.rows().values()) >= 20, 20, 0.01,
             "transactions waiting for their block")
    seeks = h.emu.stats()["deliver_seeks"]
    h.emu.faults.outage(1.5)  # the stream breaks; the pending waits go to CommitStatus (also down)
    wait_for(lambda: not (h.status("org1-partner-api") or {}).get("commit_stream", True), 10, 0.02,
             "stream reported down")
    wait_for(lambda: not h.emu.faults.in_outage(), 10, 0.05, "outage over")
    wait_for(lambda: (h.status("org1-partner-api") or {}).get("commit_stream"), 20, 0.05, "stream back")
    assert h.emu.stats()["deliver_seeks"] > seeks  # it reconnected (resuming after the last block seen)
    second = h.enqueue([_user(f"b{n}") for n in range(30)])
    wait_for(lambda: h.all_final(first + second), 60, 0.1, "all rows final")
    h.audit(first + second)
    assert p.poll() is None
    assert "Commit stream on gxchannel lost; using CommitStatus until it is back" in h.logs()


@pytest.mark.parametrize("emu_opts", [{"block_time": 0.4}])
def test_mvcc_conflicts_retry_with_new_nonce(h: Harness) -> None:
    h.spawn("org1-super-admin")
    h.spawn("org1-admin")
    (mint,) = h.enqueue([_mint("src", to="alice", amount=1000)])
    wait_for(lambda: h.all_final([mint]), 30, 0.1, "mint committed")
    transfers = h.enqueue([
        ("TRANSFER_TOKENS", {"fromUserId": "alice", "toUserId": f"bob{n}", "amount": 1,
                             "remark": f"t-{n}-{uuid.uuid4().hex[:6]}"})
        for n in range(6)
    ])
    wait_for(lambda: h.all_final(transfers), 60, 0.1, "transfers final")
    h.audit([mint, *transfers])
    ledger = read_ledger(h.ledger)
    conflicts = [t for t in ledger if t["validation_code"] == "MVCC_READ_CONFLICT"]
    assert conflicts, "transfers from one account in one block conflict"
    rows = h.rows()
    committed_txs = {rows[i]["fabric_tx_id"] for i in transfers}
    assert not committed_txs & {t["tx_id"] for t in conflicts}, "a conflicted tx id is never reused"
    assert any(rows[i]["attempts"] >= 2 for i in transfers)


def test_order_keys_keep_dependent_commands_in_order(h: Harness) -> None:
    """Commands enqueued together run concurrently, so an UNFREEZE can be endorsed before the FREEZE it
    follows has committed ("wallet is not frozen") and a transfer before the MINT that funds it. With an
    order key each runs after the one before it, across identities, woken by NOTIFY (the fallback poll
    is 60 s here, longer than the test's deadline)."""
    pairs, keys = [], []
    for n in range(4):
        user, payee = f"ok-{n}-{uuid.uuid4().hex[:8]}", f"payee-{n}-{uuid.uuid4().hex[:8]}"
        pairs += [("FREEZE_WALLET", {"userId": user, "reason": "kyc"}), ("UNFREEZE_WALLET", {"userId": user}),
                  _mint(str(n), to=user, amount=50),  # org1-super-admin
                  ("TRANSFER_TOKENS", {"fromUserId": user, "toUserId": payee, "amount": 20,  # org1-admin
                                       "remark": f"pay-{uuid.uuid4().hex[:8]}"})]
        keys += [user] * 4
    unkeyed = []
    for n in range(4):
        user = f"nokey-{n}-{uuid.uuid4().hex[:8]}"
        unkeyed += [("FREEZE_WALLET", {"userId": user, "reason": "kyc"}),
                    ("UNFREEZE_WALLET", {"userId": user})]
    ids = h.enqueue(pairs, keys)
    loose = h.enqueue(unkeyed)
    for identity in ("org1-super-admin", "org1-admin"):
        h.spawn(identity, poll_interval=60.0)
    wait_for(lambda: h.all_final([*ids, *loose]), 20, 0.1, "all final")
    rows = h.rows()
    assert {rows[i]["status"] for i in ids} == {"COMMITTED"}, [(rows[i]["status"], rows[i]["error"])
                                                                for i in ids]
    h.audit(ids)
    # On the ledger, each key's commands are in enqueue order, one block after another.
    where = {t["tx_id"]: (t["block"], t["tx_num"]) for t in read_ledger(h.ledger)}
    for k in range(0, len(ids), 4):
        spots = [where[rows[i]["fabric_tx_id"]] for i in ids[k:k + 4]]
        assert spots == sorted(spots) and len({b for b, _ in spots}) == 4, spots
    # Without a key the same pairs race: some UNFREEZE ran before its FREEZE had committed.
    unfrozen_first = [rows[i] for i in loose[1::2] if rows[i]["status"] == "FAILED"]
    assert unfrozen_first and all("is not frozen" in r["error"] for r in unfrozen_first), \
        [(rows[i]["status"], rows[i]["error"]) for i in loose]


def test_permanent_failures_fail_once_and_do_not_block(h: Harness) -> None:
    h.catalog_path = h.tmp / "catalog.toml"
    h.catalog_path.write_text(
        'extends = "default"\n\n[types.WEAK_MINT]\nidentity = "org1-admin"\n'
        'function = "TokenomicsContract:Mint"\n'
        'args = [{ field = "toUserId" }, { field = "amount", kind = "number" },'
        ' { field = "remark", default = "" }]\n'
    )
    bad_cc = h.enqueue([("CREATE_USER", {"userId": "old", "biometricHash": BIO, "nationality": "KE",
                                         "age": 200})])[0]
    bad_role = h.enqueue([("WEAK_MINT", {"toUserId": "x", "amount": 5})])[0]
    bad_payload = h.enqueue([("CREATE_USER", {"userId": "nobio", "nationality": "KE", "age": 3})])[0]
    unroutable = h.enqueue([("NO_SUCH_COMMAND", {})])[0]
    good = h.enqueue([_user("g1"), _genesis("g2"), _user("g3")])
    h.spawn("org1-partner-api")
    h.spawn("org1-admin")
    wait_for(lambda: h.all_final([bad_cc, bad_role, bad_payload, *good]), 30, 0.1, "rows final")
    rows = h.rows()
    assert rows[bad_cc]["status"] == "FAILED" and rows[bad_cc]["error_code"] == "CHAINCODE_ERROR"
    assert "invalid age" in rows[bad_cc]["error"]
    assert rows[bad_role]["status"] == "FAILED" and rows[bad_role]["error_code"] == "ROLE_DENIED"
    assert "gx_super_admin" in rows[bad_role]["error"]
    assert rows[bad_payload]["status"] == "FAILED" and rows[bad_payload]["error_code"] == "PAYLOAD_INVALID"
    assert "biometricHash" in rows[bad_payload]["error"]
    for i in (bad_cc, bad_role, bad_payload):
        assert rows[i]["attempts"] == 1, rows[i]
    assert rows[unroutable]["status"] == "PENDING"  # no worker serves it; the supervisor's sweep fails it
    h.audit(good)
    assert not any(t["validation_code"] == "VALID" and t["args"][:1] in (["old"], ["x"], ["nobio"])
                   for t in read_ledger(h.ledger))


@pytest.mark.slow  # about 10 s: kept out of the quick subset
def test_gateway_outage_backs_off_opens_breaker_and_recovers(h: Harness) -> None:
    h.emu.faults.outage(8.0)
    ids = h.enqueue([_user(str(n)) for n in range(30)])
    h.spawn("org1-partner-api", max_attempts=2, backoff_base=0.2, backoff_cap=3.0, breaker_threshold=3,
            breaker_cooldown=1.0, connect_timeout=1.0)
    wait_for(lambda: (h.status("org1-partner-api") or {}).get("breaker_open"), 20, 0.05, "breaker open")
    seen: dict[uuid.UUID, list[tuple[int, Any]]] = {}

    def sample() -> bool:
        for i, r in h.rows().items():
            hist = seen.setdefault(i, [])
            if not hist or hist[-1][0] != r["attempts"]:
                hist.append((r["attempts"], r["next_attempt_at"]))
        return not h.emu.faults.in_outage()

    wait_for(sample, 30, 0.1, "outage over")
    mid = h.rows()
    assert not [r for r in mid.values() if r["status"] == "FAILED"], "an outage never exhausts attempts"
    assert any(r["attempts"] > 2 for r in mid.values()), ("rows kept being retried past max_attempts", mid)
    codes = {r["error_code"] for r in mid.values() if r["error_code"]}
    assert codes <= {"GATEWAY_UNAVAILABLE", "BREAKER_OPEN"}, codes
    # Retry delays grow with the attempt number (equal jitter keeps at least half the ceiling).
    grew = False
    for hist in seen.values():
        gaps = [(b[1] - a[1]).total_seconds() for a, b in itertools.pairwise(hist)]
        grew = grew or any(g2 > g1 for g1, g2 in itertools.pairwise(gaps))
    assert grew, seen
    wait_for(lambda: h.all_final(ids), 60, 0.2, "all committed after the outage")
    h.audit(ids)
    wait_for(lambda: (h.status("org1-partner-api") or {}).get("breaker_open") is False, 10, 0.05,
             "breaker closed again")


@pytest.mark.slow  # about 10 s: kept out of the quick subset
@pytest.mark.parametrize("emu_opts", [{"block_time": 2.0}])  # commits wait for the block: work in flight
def test_an_outage_leaves_every_attempt_for_the_failures_after_it(h: Harness) -> None:
    """Departure 3: the claims an outage caused are not attempts. Before 2026-12-04 they were claims like
    any other, so the first counted failure after an outage dead-lettered the row (RETRIES_EXHAUSTED)."""
    h.emu.faults.outage(6.0)
    # After the outage, about one counted failure each (an endorsement that times out), then a healthy
    # gateway. Set now: the outage answers first while it lasts, and no row can commit in between.
    h.emu.faults.endorse_timeout = 1.0
    ids = h.enqueue([_user(str(n)) for n in range(6)])
    h.spawn("org1-partner-api", max_attempts=4, backoff_base=0.1, backoff_cap=1.0, breaker_threshold=10000,
            connect_timeout=1.0, endorse_timeout=0.5)
    wait_for(lambda: not h.emu.faults.in_outage(), 30, 0.1, "outage over")
    assert all(r["attempts"] >= 4 for r in h.rows().values()), "each row was claimed max_attempts times"
    timed_out: set[uuid.UUID] = set()

    def each_timed_out() -> bool:
        timed_out.update(i for i, r in h.rows().items()
                         if r["error_code"] == "DEADLINE_EXCEEDED" or r["status"] == "FAILED")
        return len(timed_out) == len(ids)

    wait_for(each_timed_out, 30, 0.02, "every row failed by an endorsement timeout")
    h.emu.faults.clear()
    wait_for(lambda: h.all_final(ids), 60, 0.2, "all final")
    rows = h.rows()
    assert {r["status"] for r in rows.values()} == {"COMMITTED"}, {i: (r["status"], r["error"])
                                                                  for i, r in rows.items()}
    h.audit(ids)


def test_sigterm_drains_and_hands_back(h: Harness) -> None:
    # Slow enough endorsements that the status file (written every 0.2 s here) sees the work in flight:
    # with 0.05-0.3 s, 300 rows could all commit within one heartbeat on a fast machine.
    h.emu.faults.latency_s = {"Endorse": (0.3, 0.8), "CommitStatus": (0.5, 1.5)}
    p = h.spawn("org1-partner-api", drain_timeout=3.0, heartbeat_interval=0.2)
    wait_for(lambda: (h.status("org1-partner-api") or {}).get("commit_stream"), 20, 0.05, "stream live")
    ids = h.enqueue([_user(str(n)) for n in range(600)])
    wait_for(lambda: ((h.status("org1-partner-api") or {}).get("in_flight") or 0) >= 100, 30, 0.02,
             "work in flight")
    p.send_signal(signal.SIGTERM)
    assert p.wait(3.0 + 10) == 0
    assert _locked_by_pid(h.rows(), p.pid) == []
    st = h.status("org1-partner-api")
    assert st is not None and st["draining"] and st["in_flight"] == 0
    # the drain's commit waits were answered by the block stream, not by a burst of CommitStatus calls
    assert h.emu.stats()["rpcs"].get("CommitStatus", 0) == 0, h.emu.stats()
    # Whatever was handed back completes exactly once under the next worker.
    h.emu.faults.latency_s = {}
    h.spawn("org1-partner-api")
    wait_for(lambda: h.all_final(ids), 60, 0.2, "all rows final")
    h.audit(ids)


def test_db_connection_loss_is_survived(h: Harness) -> None:
    h.emu.faults.latency_s = {"Submit": (0.05, 0.2)}
    ids = h.enqueue([_user(str(n)) for n in range(200)])
    p = h.spawn("org1-partner-api")
    wait_for(lambda: sum(r["status"] == "COMMITTED" for r in h.rows().values()) >= 20, 30, 0.05, "progress")
    with psycopg.connect(h.url, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE %s",
            (f"gxsubmit:%{p.pid}%",)).fetchone()
    assert killed and killed[0] >= 1
    wait_for(lambda: h.all_final(ids), 60, 0.2, "all rows final after reconnect")
    assert p.poll() is None, "the worker survived the lost connection"
    h.audit(ids)
    assert "Database reconnected" in h.logs()


def test_bad_role_in_wallet_exits_78(h: Harness) -> None:
    # The admin's certificate presented as the super-admin: role mismatch is a configuration error.
    for suffix in ("cert", "key"):
        src = h.wallet / f"org1-admin-{suffix}"
        dst = h.wallet / f"org1-super-admin-{suffix}"
        dst.write_bytes(src.read_bytes())
    p = h.spawn("org1-super-admin")
    assert p.wait(20) == 78
    assert "gx_super_admin" in h.logs()
    with psycopg.connect(h.url, autocommit=True) as conn:
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}.outbox_commands").format(
            sql.Identifier(h.schema))).fetchone()
    assert n == (0,)


def test_rotated_certificate_is_used_without_restart(h: Harness) -> None:
    from gxsubmit.devwallet import issue_identity, load_ca, write_cert, write_key
    from gxsubmit.wallet import fingerprint_of

    first = h.enqueue([_user("before")])
    p = h.spawn("org1-partner-api")
    wait_for(lambda: h.all_final(first), 30, 0.1, "first committed")
    old_fp = fingerprint_of((h.wallet / "org1-partner-api-cert").read_bytes())
    cert, key = issue_identity(load_ca(h.wallet), "org1-partner-api", "gx_partner_api")
    write_key(h.wallet / "org1-partner-api-key", key)
    write_cert(h.wallet / "org1-partner-api-cert", cert)
    new_fp = fingerprint_of(cert)
    assert new_fp != old_fp
    wait_for(lambda: "Loaded rotated certificate" in h.logs(), 20, 0.1, "rotation picked up")
    second = h.enqueue([_user("after")])
    wait_for(lambda: h.all_final(second), 30, 0.1, "second committed")
    h.audit([*first, *second])
    by_tx = {t["tx_id"]: t for t in read_ledger(h.ledger)}
    rows = h.rows()
    assert by_tx[rows[first[0]]["fabric_tx_id"]]["creator_fingerprint"] == old_fp
    assert by_tx[rows[second[0]]["fabric_tx_id"]]["creator_fingerprint"] == new_fp
    assert p.poll() is None


# -- certificate rotation across a restart (docs/design.md#rotated-certificates) ---------------------


def _rotate(h: Harness, identity: str, role: str) -> tuple[str, str]:
    """Give ``identity`` a new certificate and key in the wallet; (old, new) fingerprints."""
    from gxsubmit.devwallet import issue_identity, load_ca, write_cert, write_key
    from gxsubmit.wallet import fingerprint_of

    old = fingerprint_of((h.wallet / f"{identity}-cert").read_bytes())
    cert, key = issue_identity(load_ca(h.wallet), identity, role)
    write_key(h.wallet / f"{identity}-key", key)
    write_cert(h.wallet / f"{identity}-cert", cert)
    return old, fingerprint_of(cert)


@pytest.mark.slow  # about 10 s: kept out of the quick subset
@pytest.mark.parametrize("emu_opts", [{"block_time": 3.0}])
def test_rotation_then_restart_resolves_or_parks_old_tx_ids(h: Harness) -> None:
    # Rows submitted under the old certificate, then the worker dies and comes back holding only the new
    # one: it cannot re-endorse their tx ids, so it asks the ledger about them instead of submitting anew.
    # Those the orderer took commit under the old certificate; those killed before their Submit reached
    # it stay PENDING (ROTATION_UNRESOLVED), never submitted again, until that certificate has long
    # expired (here: its recorded expiry moved back, as time would), then get a new tx id.
    h.emu.faults.latency_s = {"Submit": (0.3, 1.5)}
    ids = h.enqueue([_user(f"rot-{n}") for n in range(40)])
    p = h.spawn("org1-partner-api", lease_seconds=2.0)
    core = h.emu._core
    assert core is not None

    def ordered_not_cut() -> bool:
        return len(core.pending) >= 3 and sum(r["status"] == "SUBMITTED" for r in h.rows().values()) >= 10

    wait_for(ordered_not_cut, 30, 0.01, "some envelopes with the orderer, their block not yet cut")
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    h.emu.faults.latency_s = {}
    in_flight = {i for i, r in h.rows().items() if r["status"] == "SUBMITTED"}
    old_tx = {i: h.rows()[i]["fabric_tx_id"] for i in in_flight}
    old_fp, new_fp = _rotate(h, "org1-partner-api", "gx_partner_api")
    h.spawn("org1-partner-api", lease_seconds=2.0, commit_timeout=1.0)

    def settled() -> bool:
        # An envelope the orderer holds is cut into a block within 3 s; until then its row may be
        # parked too (its CommitStatus deadline is 1 s), and it commits at its next check.
        rows = h.rows()
        on_ledger = {t["tx_id"] for t in read_ledger(h.ledger)}
        return not core.pending and all(
            rows[i]["status"] == "COMMITTED"
            or (rows[i]["error_code"] == "ROTATION_UNRESOLVED" and rows[i]["fabric_tx_id"] not in on_ledger)
            for i in ids)

    wait_for(settled, 60, 0.2, "every row committed, or parked with a tx id the ledger lacks")
    rows = h.rows()
    ledger = read_ledger(h.ledger)
    by_tx = {t["tx_id"]: t for t in ledger if t["validation_code"] == "VALID"}
    resolved = {i for i in in_flight if rows[i]["status"] == "COMMITTED"}
    parked = {i for i in ids if rows[i]["status"] != "COMMITTED"}
    assert resolved and parked and parked <= in_flight
    # Resolved: the old tx id itself, committed under the old certificate.
    assert all(rows[i]["fabric_tx_id"] == old_tx[i] for i in resolved)
    assert {by_tx[old_tx[i]]["creator_fingerprint"] for i in resolved} == {old_fp}
    # Parked: PENDING (or claimed for its next check) with the old tx id, which is nowhere on the
    # ledger; nothing new submitted.
    on_ledger = {t["tx_id"] for t in ledger}
    for i in parked:
        assert rows[i]["status"] in ("PENDING", "CLAIMED") and rows[i]["fabric_tx_id"] == old_tx[i]
        assert old_tx[i] not in on_ledger
        assert "a new tx id is drawn if the ledger still lacks it after" in rows[i]["error"]
    assert "submitting anew" not in h.logs()

    with psycopg.connect(h.url, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "UPDATE {}.outbox_commands SET creator_not_after = now() - interval '2 hours' WHERE id = ANY(%s)"
        ).format(sql.Identifier(h.schema)), [list(parked)])
    wait_for(lambda: h.all_final(ids), 60, 0.2, "parked rows submitted anew")
    h.audit(ids)
    rows = h.rows()
    by_tx = {t["tx_id"]: t for t in read_ledger(h.ledger) if t["validation_code"] == "VALID"}
    assert all(rows[i]["status"] == "COMMITTED" for i in ids)
    assert {by_tx[rows[i]["fabric_tx_id"]]["creator_fingerprint"] for i in parked} == {new_fp}
    assert "Old transaction can no longer commit, submitting anew" in h.logs()


def _as_submitted_under(h: Harness, cert_pem: bytes, rows: Mapping[uuid.UUID, Any]) -> dict[uuid.UUID, str]:
    """Make each row look submitted under ``cert_pem`` (whose tx never reached the ledger), with the given
    recorded certificate expiry; returns each row's old tx id."""
    from gxsubmit.fabric import compute_tx_id, new_nonce
    from gxsubmit.fabric.identity import serialize_identity
    from gxsubmit.wallet import fingerprint_of

    creator = serialize_identity("Org1MSP", cert_pem)
    out = {}
    with psycopg.connect(h.url, autocommit=True) as conn:
        for rid, not_after in rows.items():
            nonce = new_nonce()
            out[rid] = compute_tx_id(nonce, creator)
            conn.execute(sql.SQL(
                "UPDATE {}.outbox_commands SET tx_nonce = %s, fabric_tx_id = %s, creator_fingerprint = %s, "
                "creator_not_after = %s, submitted_at = now(), attempts = 1 WHERE id = %s"
            ).format(sql.Identifier(h.schema)), [nonce, out[rid], fingerprint_of(cert_pem), not_after, rid])
    return out


def test_lost_tx_id_of_a_long_expired_certificate_is_submitted_anew(h: Harness) -> None:
    from datetime import UTC, datetime, timedelta

    from gxsubmit.devwallet import issue_identity, load_ca
    from gxsubmit.wallet import fingerprint_of

    old_cert, _key = issue_identity(load_ca(h.wallet), "org1-partner-api", "gx_partner_api")
    now = datetime.now(UTC)
    expired, valid, unknown = h.enqueue([_user("expired"), _user("valid"), _user("unknown")])
    old = _as_submitted_under(h, old_cert, {
        expired: now - timedelta(hours=2),  # long expired: orderers refuse it, so it can never commit
        valid: now + timedelta(days=30),  # might still be ordered: wait
        unknown: None,  # a row from before schema version 4: wait
    })
    h.spawn("org1-partner-api", commit_timeout=1.0)

    def settled() -> bool:
        rows = h.rows()
        return rows[expired]["status"] == "COMMITTED" and all(
            rows[i]["error_code"] == "ROTATION_UNRESOLVED" for i in (valid, unknown))

    wait_for(settled, 30, 0.1, "expired one resubmitted, the others parked")
    h.audit([expired])
    rows = h.rows()
    ledger = read_ledger(h.ledger)
    (tx,) = [t for t in ledger if t["tx_id"] == rows[expired]["fabric_tx_id"]]
    assert tx["creator_fingerprint"] == fingerprint_of((h.wallet / "org1-partner-api-cert").read_bytes())
    assert rows[expired]["fabric_tx_id"] != old[expired]
    assert "Old transaction can no longer commit, submitting anew" in h.logs()
    # The others are neither failed nor submitted under a new tx id: nothing of theirs on the ledger.
    on_ledger = {t["tx_id"] for t in ledger}
    for rid in (valid, unknown):
        assert rows[rid]["status"] in ("PENDING", "CLAIMED") and rows[rid]["fabric_tx_id"] == old[rid]
        assert old[rid] not in on_ledger
    assert len(ledger) == 1
    assert "a new tx id is drawn if the ledger still lacks it after" in rows[valid]["error"]
    assert "expiry is not recorded" in rows[unknown]["error"]


def test_an_idle_worker_takes_a_dead_holders_rows_over_when_their_lease_runs_out(h: Harness) -> None:
    """No NOTIFY comes for an expired lease: an idle worker used to take such rows over only at its next
    poll (30 s by default, 300 s here), so a dead replica's rows waited for it. It now claims again
    when the earliest lease of another holder runs out."""
    ids = h.enqueue([_user("orphan")])
    with psycopg.connect(h.url, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "UPDATE {}.outbox_commands SET status = 'CLAIMED', locked_by = 'gone:org1-partner-api:1', "
            "locked_at = now(), lease_token = gen_random_uuid(), "
            "lease_expires_at = now() + interval '4 seconds' WHERE id = %s").format(sql.Identifier(h.schema)),
            (ids[0],))
    h.spawn("org1-partner-api", poll_interval=300.0)
    wait_for(lambda: h.all_final(ids), 30, 0.1, "the orphaned row committed well before the 300 s poll")
    h.audit(ids)
