"""Derived transaction ids (issue 15): the ledger, not the table, decides whether a command already ran.

Real worker processes, real PostgreSQL, the emulator over a real socket, and the ledger audit after each.
"""

from __future__ import annotations

import signal
import uuid
from typing import Any

import psycopg
import pytest
import test_worker
from audit import args_key, read_ledger
from dbutil import run_sync
from psycopg import sql
from test_worker import Harness, _mint
from waiting import wait_for

from gxsubmit.catalog import load_catalog
from gxsubmit.outbox import OutboxStore, enqueue

# The worker tests' fixtures: an emulator in this process, real worker processes, this test's schema.
h = test_worker.h
emu_opts = test_worker.emu_opts


def _enqueue_as(hh: Harness, request_id: str, item: tuple[str, dict[str, Any]]) -> uuid.UUID:
    """Enqueue with a producer's request id (and record what the audit expects of it)."""
    ctype, payload = item

    async def go() -> uuid.UUID:
        async with await psycopg.AsyncConnection.connect(hh.url, autocommit=True) as conn:
            cid, _ = await enqueue(conn, command_type=ctype, payload=payload, schema=hh.schema,
                                   request_id=request_id)
            return cid

    cid = run_sync(go())
    route = load_catalog(None).route(ctype)
    assert route is not None
    hh.expected[cid] = args_key(route.function, route.build_args(payload))
    return cid


def _prune_all(hh: Harness) -> int:
    async def go() -> int:
        store = await OutboxStore.connect(hh.url, schema=hh.schema, worker_id="test-prune")
        try:
            n, _ = await store.prune(0.0)
            return n
        finally:
            await store.close()

    return int(run_sync(go()))


def _valid(hh: Harness) -> list[dict[str, Any]]:
    return [t for t in read_ledger(hh.ledger) if t["validation_code"] == "VALID"]


def test_a_pruned_request_enqueued_again_resolves_to_its_transaction(h: Harness) -> None:
    # Show 3: a producer re-sends a request after its row was pruned (or lost with a restore). The
    # derived tx id is the one already on the ledger: the endorser says "duplicate", CommitStatus says
    # VALID, and the row is COMMITTED with the original tx id and block. Nothing is added to the ledger.
    same = _mint("again")
    changed_first = _mint("reused")
    first = {rid: _enqueue_as(h, rid, item)
             for rid, item in (("req-same", same), ("req-reused", changed_first))}
    h.spawn("org1-super-admin")
    wait_for(lambda: h.all_final(first.values()), 30, 0.1, "first copies committed")
    h.audit(first.values())
    before = h.rows()
    original = {rid: (before[cid]["fabric_tx_id"], before[cid]["commit_block"]) for rid, cid in first.items()}
    assert _prune_all(h) == 2
    assert not h.rows()
    n_valid = len(_valid(h))

    again = _enqueue_as(h, "req-same", same)
    # The same request id for a *different* command (another amount): not resolved to the old transaction.
    _, payload = changed_first
    reused = _enqueue_as(h, "req-reused", ("MINT", {**payload, "amount": payload["amount"] + 1}))
    wait_for(lambda: h.all_final([again, reused]), 30, 0.1, "re-sent rows final")
    rows = h.rows()
    assert rows[again]["status"] == "COMMITTED", rows[again]
    assert (rows[again]["fabric_tx_id"], rows[again]["commit_block"]) == original["req-same"]
    assert rows[reused]["status"] == "COMMITTED", rows[reused]
    assert rows[reused]["fabric_tx_id"] != original["req-reused"][0]
    assert len(_valid(h)) == n_valid + 1  # only the different command added a transaction
    h.audit([again, reused])


@pytest.mark.parametrize("emu_opts", [{"block_time": 3.0, "block_size": 1000}])
def test_a_mismatching_re_endorsement_of_an_ordered_copy_burns_no_nonce(h: Harness) -> None:
    # Show 4: Submit's answer is lost (the envelope IS ordered), the row is retried while its block is
    # still being cut, and re-endorsing the same tx id answers "ProposalResponsePayloads do not match".
    # Burning the nonce there sent a second transaction that committed VALID beside the first.
    h.emu.faults.submit_lost_ack = 0.5
    h.emu.faults.endorse_mismatch_in_flight = True
    ids = h.enqueue([_mint(str(n)) for n in range(30)])
    h.spawn("org1-super-admin", backoff_base=0.05, backoff_cap=0.3, max_attempts=50, breaker_threshold=10000)
    wait_for(lambda: h.all_final(ids), 90, 0.2, "all rows final")
    stats = h.emu.stats()
    assert stats["lost_acks"] > 0
    assert "ENDORSEMENT_MISMATCH" in h.logs()  # the window was hit
    h.audit(ids)
    assert len(_valid(h)) == len(ids)


@pytest.mark.slow  # about 10 s: kept out of the quick subset
@pytest.mark.parametrize("reencode", [True, False], ids=["crlf-no-final-newline", "same-bytes"])
@pytest.mark.parametrize("emu_opts", [{"block_time": 3.0}])
def test_a_restart_with_rows_in_doubt_sends_no_second_transaction(h: Harness, reencode: bool) -> None:
    # Show 5: rows submitted, the worker SIGKILLed while their block is being cut, the block commits,
    # and the worker comes back with the *same* certificate saved with CRLF line ends and no final
    # newline (or unchanged: rows in doubt alone). Its creator bytes differ, so would every tx id: it
    # signs as the creator the rows recorded, and the rows in doubt resolve to their first copies.
    h.emu.faults.latency_s = {"Submit": (0.2, 0.8)}
    ids = h.enqueue([_mint(f"crlf-{n}") for n in range(40)])
    p = h.spawn("org1-super-admin", lease_seconds=2.0)
    core = h.emu._core
    assert core is not None

    def ordered_not_cut() -> bool:
        return len(core.pending) >= 3 and sum(r["status"] == "SUBMITTED" for r in h.rows().values()) >= 10

    wait_for(ordered_not_cut, 30, 0.01, "envelopes with the orderer, their block not yet cut")
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    h.emu.faults.latency_s = {}
    in_doubt = {i for i, r in h.rows().items() if r["status"] == "SUBMITTED"}
    assert in_doubt
    if reencode:
        cert = h.wallet / "org1-super-admin-cert"
        pem = cert.read_bytes()
        cert.write_bytes(pem.replace(b"\n", b"\r\n").rstrip(b"\r\n"))
    h.spawn("org1-super-admin", lease_seconds=2.0)
    wait_for(lambda: h.all_final(ids), 60, 0.2, "all rows final after the restart")
    h.audit(ids)
    assert len(_valid(h)) == len(ids)


def test_the_generation_walk_follows_invalid_copies_on_the_ledger(h: Harness) -> None:
    # A restored row is behind the ledger: its generation-0 tx id committed INVALID (MVCC) and its
    # generation-1 tx id VALID after the dump. The worker walks: duplicate -> INVALID -> next generation
    # -> duplicate -> VALID: COMMITTED with the generation-1 transaction, nothing sent.
    h.emu.faults.mvcc = 1.0
    (rid,) = h.enqueue([_mint("walk")])
    p = h.spawn("org1-super-admin", backoff_base=0.05, backoff_cap=0.2)

    with psycopg.connect(h.url, autocommit=True) as conn:
        def generation() -> int:
            row = conn.execute(sql.SQL("SELECT tx_generation FROM {}.outbox_commands WHERE id = %s").format(
                sql.Identifier(h.schema)), [rid]).fetchone()
            return int(row[0]) if row else -1

        wait_for(lambda: generation() >= 1, 30, 0.05, "one MVCC conflict burnt generation 0")
        h.emu.faults.mvcc = 0.0
        wait_for(lambda: h.all_final([rid]), 30, 0.1, "committed")
        p.send_signal(signal.SIGTERM)
        p.wait(15)
        committed_tx = h.rows()[rid]["fabric_tx_id"]
        n_valid = len(_valid(h))
        # What a restore from a dump taken before all that looks like: generation 0, nothing recorded.
        conn.execute(sql.SQL(
            "UPDATE {}.outbox_commands SET status = 'PENDING', tx_generation = 0, fabric_tx_id = NULL, "
            "tx_nonce = NULL, submitted_at = NULL, commit_block = NULL, validation_code = NULL, "
            "committed_at = NULL, attempts = 0, counted_attempts = 0, next_attempt_at = now() WHERE id = %s"
        ).format(sql.Identifier(h.schema)), [rid])
    h.spawn("org1-super-admin")
    wait_for(lambda: h.all_final([rid]), 30, 0.1, "committed again")
    row = h.rows()[rid]
    assert row["status"] == "COMMITTED" and row["fabric_tx_id"] == committed_tx
    assert len(_valid(h)) == n_valid
    assert "Transaction id already INVALID on the ledger, next generation" in h.logs()
    h.audit([rid])


def test_a_row_with_a_stored_nonce_keeps_it(h: Harness) -> None:
    # Rows written before migration 0008 hold a random nonce (and the certificate's DER fingerprint):
    # they keep that nonce and so their tx id, which may already be on its way to the ledger.
    from gxsubmit.fabric import compute_tx_id, new_nonce
    from gxsubmit.fabric.identity import serialize_identity
    from gxsubmit.wallet import fingerprint_of

    pem = (h.wallet / "org1-super-admin-cert").read_bytes()
    (rid,) = h.enqueue([_mint("legacy")])
    nonce = new_nonce()
    tx_id = compute_tx_id(nonce, serialize_identity("Org1MSP", pem))
    with psycopg.connect(h.url, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "UPDATE {}.outbox_commands SET tx_nonce = %s, fabric_tx_id = %s, creator_fingerprint = %s "
            "WHERE id = %s").format(sql.Identifier(h.schema)), [nonce, tx_id, fingerprint_of(pem), rid])
    h.spawn("org1-super-admin")
    wait_for(lambda: h.all_final([rid]), 30, 0.1, "committed")
    row = h.rows()[rid]
    assert row["status"] == "COMMITTED" and row["fabric_tx_id"] == tx_id
    h.audit([rid])
