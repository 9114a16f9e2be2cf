"""Issue 16, the row side, as operators run the service: ``gxsubmit supervise``, the emulator, PostgreSQL.

No row stalls a worker or loops for ever: hostile payloads end FAILED with a code within their attempt
limit while the good rows around them commit once each, and a row that kills its worker ends
WORKER_CRASH while the worker, restarted, serves everything else.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import psycopg
from audit import args_key, audit_exactly_once, outbox_rows
from harness import EmulatorProc, ServiceProc, all_finished, enqueue_many, service_settings, users
from psycopg import sql
from waiting import wait_for

from gxsubmit.catalog import load_catalog

BIO = "ab" * 32
CRASH_HOOK = Path(__file__).parent / "crashhook"


def start(procs: list[Any], tmp_path: Path, settings: dict[str, str]) -> ServiceProc:
    svc = ServiceProc("svc", tmp_path, settings)
    procs.append(svc)
    return svc.start()


def insert_raw(url: str, schema: str, payload_text: str, request_id: str) -> uuid.UUID:
    """A CREATE_USER row with this payload text, as a producer's INSERT would write it (jsonb as is)."""
    rid = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {}.outbox_commands (id, service, command_type, request_id, payload) "
                    "VALUES (%s, 'hostile', 'CREATE_USER', %s, %s::jsonb)").format(sql.Identifier(schema)),
            (rid, request_id, payload_text),
        )
    return rid


def expected_args(rows: dict[uuid.UUID, dict[str, Any]], ids: set[uuid.UUID]) -> dict[uuid.UUID, Any]:
    import json

    route = load_catalog(None).route("CREATE_USER")
    assert route is not None
    return {i: args_key(route.function, route.build_args(json.loads(rows[i]["payload"]))) for i in ids}


def restarts(svc: ServiceProc, identity: str = "org1-partner-api") -> int:
    return int(svc.status()["workers"][identity]["restarts"])


def test_four_hostile_rows_among_500_good_ones(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    base = f'"biometricHash": "{BIO}", "nationality": "KE"'
    hostile = {
        "digits": f'{{"userId": "h-digits", {base}, "age": {"9" * 5000}}}',
        "exponent": f'{{"userId": "h-exp", {base}, "age": 1e5000}}',
        "deep": f'{{"userId": "h-deep", {base}, "age": 30, "extra": {"[" * 5000}{"]" * 5000}}}',
        "huge": f'{{"userId": "{"x" * (20 * 1024 * 1024)}", {base}, "age": 30}}',
    }
    enqueue_many(pg_url, schema, users(250, "a"), prefix="a")
    bad = {name: insert_raw(pg_url, schema, text, f"hostile-{name}") for name, text in hostile.items()}
    enqueue_many(pg_url, schema, users(250, "b"), prefix="b")
    settings = service_settings(pg_url, schema, wallet, emulator, GXSUBMIT_MAX_ATTEMPTS="3")
    svc = start(procs, tmp_path, settings)
    svc.wait_ready()
    wait_for(lambda: all_finished(pg_url, schema, 504), 180, interval=0.5, what="all 504 rows final")

    rows = outbox_rows(pg_url, schema)
    for name, i in bad.items():
        row = rows[i]
        assert row["status"] == "FAILED", (name, row["status"], row["error"])
        assert row["attempts"] <= 3, (name, row["attempts"])
        assert len(row["error"]) < 300, (name, row["error"][:300])
    codes = {name: rows[i]["error_code"] for name, i in bad.items()}
    assert codes == {"digits": "PAYLOAD_INVALID", "exponent": "PAYLOAD_INVALID", "deep": "PAYLOAD_INVALID",
                     "huge": "PAYLOAD_TOO_LARGE"}
    good = {i for i in rows if i not in bad.values()}
    assert len(good) == 500
    report = audit_exactly_once(emulator.ledger, expected_args(rows, good), rows)
    assert report.ok, str(report)
    assert report.valid_txs == 500
    # the worker never restarted, and never failed a claim
    assert restarts(svc) == 0
    assert svc.metric("gxsubmit_worker_restarts_total", identity="org1-partner-api") == 0
    assert not svc.messages("Claim failed")
    assert svc.metric("gxsubmit_commands_failed_total", error_code="PAYLOAD_INVALID") == 3
    assert svc.metric("gxsubmit_commands_failed_total", error_code="PAYLOAD_TOO_LARGE") == 1


def test_a_row_that_kills_its_worker_ends_worker_crash(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    # A test-only hook (crashhook/sitecustomize.py, on PYTHONPATH for this service only) SIGKILLs a worker
    # that builds the arguments of userId "crash-me". It used to be handed back and claimed again for ever.
    items = users(40, "c")
    items.insert(20, ("CREATE_USER", {"userId": "crash-me", "biometricHash": BIO, "nationality": "KE",
                                      "age": 30}))
    enqueue_many(pg_url, schema, items, prefix="c")
    path = os.pathsep.join(p for p in (str(CRASH_HOOK), os.environ.get("PYTHONPATH", "")) if p)
    settings = service_settings(pg_url, schema, wallet, emulator, GXSUBMIT_MAX_WORKER_CRASHES="3",
                                PYTHONPATH=path)
    svc = start(procs, tmp_path, settings)
    wait_for(lambda: all_finished(pg_url, schema, 41), 120, interval=0.3, what="all 41 rows final")

    rows = outbox_rows(pg_url, schema)
    (culprit,) = [i for i, r in rows.items() if r["status"] != "COMMITTED"]
    row = rows[culprit]
    assert (row["status"], row["error_code"]) == ("FAILED", "WORKER_CRASH"), row
    assert "3 claims" in row["error"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        query = sql.SQL("SELECT id, crashed_claims FROM {}.outbox_commands").format(sql.Identifier(schema))
        crashed: dict[uuid.UUID, int] = dict(conn.execute(query).fetchall())
    assert crashed[culprit] == 3
    # the rows that shared its claims were tried alone after its second crash and committed, never blamed
    # for a third
    assert max(n for i, n in crashed.items() if i != culprit) <= 2
    good = set(rows) - {culprit}
    report = audit_exactly_once(emulator.ledger, expected_args(rows, good), rows)
    assert report.ok, str(report)
    assert svc.metric("gxsubmit_commands_failed_total", error_code="WORKER_CRASH") == 1
    # three crashes, three restarts, and the worker is up and serving afterwards
    assert restarts(svc) == 3
    wait_for(lambda: svc.status()["workers"]["org1-partner-api"]["state"] == "running", 30, what="worker up")
    enqueue_many(pg_url, schema, users(5, "after"), prefix="after")
    wait_for(lambda: all_finished(pg_url, schema, 46), 30, interval=0.2, what="later rows committed")
    assert restarts(svc) == 3


def test_a_row_that_hangs_its_worker_ends_worker_crash(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    # userId "hang-me" blocks the worker's event loop (crashhook/sitecustomize.py): no heartbeat, so the
    # supervisor's watchdog aborts it. Each such kill counts as a crashed claim, like a crash.
    items = users(10, "w")
    hang = {"userId": "hang-me", "biometricHash": BIO, "nationality": "KE", "age": 30}
    items.insert(5, ("CREATE_USER", hang))
    enqueue_many(pg_url, schema, items, prefix="w")
    path = os.pathsep.join(p for p in (str(CRASH_HOOK), os.environ.get("PYTHONPATH", "")) if p)
    settings = service_settings(pg_url, schema, wallet, emulator, GXSUBMIT_MAX_WORKER_CRASHES="2",
                                GXSUBMIT_HEARTBEAT_TIMEOUT="2", PYTHONPATH=path)
    svc = start(procs, tmp_path, settings)
    wait_for(lambda: all_finished(pg_url, schema, 11), 120, interval=0.3, what="all 11 rows final")
    rows = outbox_rows(pg_url, schema)
    (culprit,) = [i for i, r in rows.items() if r["status"] != "COMMITTED"]
    assert (rows[culprit]["status"], rows[culprit]["error_code"]) == ("FAILED", "WORKER_CRASH")
    assert [m for m in svc.messages("Worker timed out") if m.get("worker") == "org1-partner-api"]
    assert restarts(svc) == 2
    report = audit_exactly_once(emulator.ledger, expected_args(rows, set(rows) - {culprit}), rows)
    assert report.ok, str(report)
