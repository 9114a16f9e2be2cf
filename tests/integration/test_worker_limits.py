"""Hostile rows against a real worker process, PostgreSQL and the emulator (issue 16, the row side).

A row the claim cannot decode, a row over a size limit and a row the orderer refuses each end FAILED
with a code, and the rows claimed beside them still commit once each (tests/audit.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import test_worker
from psycopg import sql
from test_worker import BIO, Harness, _user
from waiting import wait_for

# the worker tests' fixtures: a harness with a dev wallet, the emulator in this process, worker processes
emu_opts = test_worker.emu_opts
h = test_worker.h


def insert_raw(h: Harness, command_type: str, payload_text: str) -> uuid.UUID:
    """A row whose payload PostgreSQL accepts but Python may not (the text goes in as jsonb as is)."""
    rid = uuid.uuid4()
    with psycopg.connect(h.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {}.outbox_commands (id, service, command_type, request_id, payload) "
                    "VALUES (%s, 'test', %s, %s, %s::jsonb)").format(sql.Identifier(h.schema)),
            (rid, command_type, str(rid), payload_text),
        )
    return rid


def hostile_user_payloads() -> dict[str, str]:
    """The four rows of the issue: a 5,000-digit age, age 1e5000, a field nested 5,000 arrays deep and
    a 20 MB userId (each otherwise a good CREATE_USER)."""
    base = f'"biometricHash": "{BIO}", "nationality": "KE"'
    return {
        "digits": f'{{"userId": "u-digits", {base}, "age": {"9" * 5000}}}',
        "exponent": f'{{"userId": "u-exp", {base}, "age": 1e5000}}',
        "deep": f'{{"userId": "u-deep", {base}, "age": 30, "extra": {"[" * 5000}{"]" * 5000}}}',
        "huge": f'{{"userId": "{"x" * (20 * 1024 * 1024)}", {base}, "age": 30}}',
    }


def test_hostile_rows_fail_alone_and_their_batch_commits(h: Harness) -> None:
    good = h.enqueue([_user(f"g{i}") for i in range(20)])
    bad = {name: insert_raw(h, "CREATE_USER", text) for name, text in hostile_user_payloads().items()}
    good += h.enqueue([_user(f"h{i}") for i in range(20)])
    h.spawn("org1-partner-api", max_attempts=3)
    wait_for(lambda: h.all_final([*good, *bad.values()]), 60, 0.2, "every row final")
    rows = h.rows()
    codes = {name: (rows[i]["status"], rows[i]["error_code"]) for name, i in bad.items()}
    assert codes == {"digits": ("FAILED", "PAYLOAD_INVALID"), "exponent": ("FAILED", "PAYLOAD_INVALID"),
                     "deep": ("FAILED", "PAYLOAD_INVALID"), "huge": ("FAILED", "PAYLOAD_TOO_LARGE")}, codes
    for name, i in bad.items():
        assert rows[i]["attempts"] == 1, (name, rows[i]["attempts"])
        assert len(rows[i]["error"]) < 300, (name, rows[i]["error"][:300])
    assert "digits" in rows[bad["digits"]]["error"] and "deep" in rows[bad["deep"]]["error"]
    assert "bytes" in rows[bad["huge"]]["error"]
    h.audit(good)
    assert h.procs[0].poll() is None  # the worker is still up
    assert "Claim failed" not in h.logs()


def test_arguments_and_proposal_over_their_limits_fail_at_once(h: Harness) -> None:
    args_big = h.enqueue([("CREATE_USER", {"userId": "a" * 3000, "biometricHash": BIO, "nationality": "KE",
                                           "age": 30})])[0]
    good = h.enqueue([_user("ok")])
    h.spawn("org1-partner-api", max_argument_bytes=2048)
    wait_for(lambda: h.all_final([args_big, *good]), 30, 0.1, "rows final")
    rows = h.rows()
    assert (rows[args_big]["status"], rows[args_big]["error_code"]) == ("FAILED", "PAYLOAD_TOO_LARGE")
    assert rows[args_big]["attempts"] == 1 and rows[args_big]["submitted_at"] is None
    assert "2048" in rows[args_big]["error"]
    h.stop_all()
    proposal_big = h.enqueue([("CREATE_USER", {"userId": "p" * 5000, "biometricHash": BIO,
                                               "nationality": "KE", "age": 30})])[0]
    h.spawn("org1-partner-api", max_proposal_bytes=4096)
    wait_for(lambda: h.all_final([proposal_big]), 30, 0.1, "row final")
    row = h.rows()[proposal_big]
    assert (row["status"], row["error_code"]) == ("FAILED", "PAYLOAD_TOO_LARGE")
    assert row["submitted_at"] is None
    assert "proposal" in row["error"]
    h.audit(good)


def test_an_envelope_the_orderer_refuses_fails_at_once(h: Harness) -> None:
    # The orderer's BatchSize.AbsoluteMaxBytes (the emulator's orderer_max_bytes) below the big row's
    # envelope: the orderer says REQUEST_ENTITY_TOO_LARGE. No earlier copy exists, so nothing can be on
    # the ledger: FAILED at once, instead of resolving a tx id the ledger will never hold, for ever.
    h.emu.faults.orderer_max_bytes = 60_000
    big = h.enqueue([("CREATE_USER", {"userId": "b" * 100_000, "biometricHash": BIO, "nationality": "KE",
                                      "age": 30})])[0]
    good = h.enqueue([_user(f"o{i}") for i in range(5)])
    h.spawn("org1-partner-api", max_attempts=3, commit_timeout=1.0)
    wait_for(lambda: h.all_final([big, *good]), 60, 0.1, "rows final")
    row = h.rows()[big]
    assert (row["status"], row["error_code"]) == ("FAILED", "PAYLOAD_TOO_LARGE"), row["error"]
    assert "REQUEST_ENTITY_TOO_LARGE" in row["error"]
    st = h.status("org1-partner-api")
    assert st is not None and not st["breaker_open"]
    h.audit(good)


def test_a_refused_row_that_may_be_on_the_ledger_ends_within_its_attempts(h: Harness) -> None:
    # First try: Submit times out (in doubt: a copy may be on its way). Then the orderer refuses every
    # copy, and CommitStatus never learns of the tx id. The row used to be resolved for ever; now each
    # such try counts, and the row ends FAILED with its tx id kept (a requeue resolves that tx id first).
    h.emu.faults.submit_timeout = 1.0
    (rid,) = h.enqueue([("CREATE_USER", {"userId": "r" * 100_000, "biometricHash": BIO,
                                         "nationality": "KE", "age": 30})])
    h.spawn("org1-partner-api", max_attempts=3, commit_timeout=1.0, submit_timeout=0.5, commit_events=False)

    def submitted() -> bool:
        return h.rows()[rid]["error_code"] is not None

    wait_for(submitted, 30, 0.1, "first submit timed out")
    h.emu.faults.submit_timeout = 0.0
    h.emu.faults.orderer_max_bytes = 60_000
    wait_for(lambda: h.all_final([rid]), 90, 0.2, "row final")
    row = h.rows()[rid]
    assert (row["status"], row["error_code"]) == ("FAILED", "PAYLOAD_TOO_LARGE"), row["error"]
    assert row["fabric_tx_id"] and "requeue" in row["error"]
    # the in-doubt tries before the faults changed do not count (how many there were depends on the
    # machine's speed); the refused ones do, and end the row at max_attempts
    assert "after 3 attempts" in row["error"], row["error"]
    st = h.status("org1-partner-api")
    assert st is not None and not st["breaker_open"]


def test_a_message_over_the_grpc_cap_fails_its_row_and_never_the_breaker(h: Harness) -> None:
    # With the limits raised past it, a 5 MB argument reaches grpcio's 4 MiB cap (the emulator's server
    # keeps grpcio's default): RESOURCE_EXHAUSTED "message larger than max". That is this row's problem;
    # it used to be taken for an outage (never counted, breaker opened, retried for ever).
    big = h.enqueue([("CREATE_USER", {"userId": "g" * (5 * 1024 * 1024), "biometricHash": BIO,
                                      "nationality": "KE", "age": 30})])[0]
    good = h.enqueue([_user(f"c{i}") for i in range(5)])
    h.spawn("org1-partner-api", breaker_threshold=1, max_payload_bytes=16 << 20, max_argument_bytes=16 << 20,
            max_proposal_bytes=16 << 20)
    wait_for(lambda: h.all_final([big, *good]), 60, 0.1, "rows final")
    row = h.rows()[big]
    assert (row["status"], row["error_code"]) == ("FAILED", "PAYLOAD_TOO_LARGE"), row["error"]
    assert "larger than max" in row["error"] and row["attempts"] == 1
    st = h.status("org1-partner-api")
    assert st is not None and not st["breaker_open"]
    assert "circuit breaker opened" not in h.logs()
    h.audit(good)


def test_a_row_in_doubt_past_its_limit_ends_and_a_requeue_resolves_it_once(h: Harness) -> None:
    # Every Submit times out (the copy is never ordered, the worker cannot know): the row is in doubt on
    # every try, which never counts against max_attempts, so it used to be retried for ever and to hold
    # its order key for ever. Past in_doubt_limit it ends FAILED, keeping its tx id; once the gateway
    # orders again, a requeue re-endorses that same tx id and the command commits exactly once.
    h.emu.faults.submit_timeout = 1.0
    (rid,) = h.enqueue([_user("doubt")], order_keys=["acct-1"])
    (after,) = h.enqueue([_user("after-doubt")], order_keys=["acct-1"])
    h.spawn("org1-partner-api", max_attempts=3, commit_timeout=1.0, submit_timeout=0.5, commit_events=False,
            in_doubt_limit=3.0)
    wait_for(lambda: h.rows()[rid]["status"] == "FAILED", 90, 0.2, "the in-doubt row ends")
    row = h.rows()[rid]
    assert row["error_code"] == "IN_DOUBT_UNRESOLVED", row["error"]
    assert row["fabric_tx_id"] and "requeue resolves it" in row["error"]
    assert row["attempts"] > 3  # in doubt: more tries than max_attempts, ended by time
    tx_id = row["fabric_tx_id"]
    # the FAILED row frees its order key: the next command of the key is no longer held behind it
    h.emu.faults.submit_timeout = 0.0
    wait_for(lambda: h.rows()[after]["status"] == "COMMITTED", 60, 0.2, "the key's next row commits")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
    env.update(h.config().to_env())
    subprocess.run([sys.executable, "-m", "gxsubmit", "requeue", "--id", str(rid)], env=env, check=True,
                   capture_output=True, timeout=60)
    wait_for(lambda: h.rows()[rid]["status"] == "COMMITTED", 60, 0.2, "the requeued row commits")
    assert h.rows()[rid]["fabric_tx_id"] == tx_id  # the same transaction, not a second one
    h.audit([rid, after])


def test_lease_takeovers_dead_letter_a_row_only_at_twice_the_crash_limit(h: Harness) -> None:
    """Found by the 30-minute soak (seed 2028): 7 rows ended WORKER_CRASH whose third counted claim was
    a takeover from an expired lease, the holder cut off from the database or frozen by the faults,
    not killed by the row. A takeover is weaker evidence than a death the supervisor saw (which still
    dead-letters at the limit, with the row run alone first): it ends a row only at twice the limit."""
    ids = h.enqueue([_user("taken-over-3"), _user("taken-over-6")])
    with psycopg.connect(h.url, autocommit=True) as conn:
        for rid, crashes in zip(ids, (3, 6), strict=True):
            # what the claim SQL leaves after that many takeovers of an expired CLAIMED lease
            conn.execute(sql.SQL("UPDATE {}.outbox_commands SET crashed_claims = %s WHERE id = %s").format(
                sql.Identifier(h.schema)), (crashes, rid))
    h.spawn("org1-partner-api", max_worker_crashes=3)
    wait_for(lambda: h.all_final(ids), 60, 0.1, "both rows final")
    rows = h.rows()
    assert rows[ids[0]]["status"] == "COMMITTED", rows[ids[0]]
    assert (rows[ids[1]]["status"], rows[ids[1]]["error_code"]) == ("FAILED", "WORKER_CRASH"), rows[ids[1]]
    h.audit([ids[0]])
