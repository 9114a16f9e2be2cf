"""The service through a real PgBouncer in transaction mode, as production databases are often reached.

Only the pooled URL is given (no special setting): the workload commits with no error, workers find
that NOTIFY does not reach them and poll every ``pooled_poll_interval`` (said once in the log and on
/status), and a lone later row is picked up within the documented bound (docs/operations.md: about
1.2 x pooled_poll_interval plus a claim; the fallback poll here is 30 s, so the short poll is what
picks it up). A supervisor SIGKILLed through the pooler is taken over by another one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import (
    EmulatorProc,
    ServiceProc,
    all_finished,
    audit,
    counts,
    enqueue_many,
    held_by,
    service_settings,
    users,
)
from pooler import pgbouncer_for, pooled_url
from psycopg import sql
from waiting import wait_for

from gxsubmit.pgbouncer import PgBouncer

pytestmark = pytest.mark.slow

#: What the test accepts as "picked up by the short poll": far above 1.2 x 1 s (a loaded machine),
#: far below the 24 s the 30 s fallback poll would take at the earliest.
PICKUP_BOUND_S = 10.0


@pytest.fixture
def bouncer(pg_url: str) -> Iterator[PgBouncer]:
    with pgbouncer_for(pg_url) as b:
        yield b


def start(procs: list[Any], tmp_path: Path, name: str, settings: dict[str, str]) -> ServiceProc:
    svc = ServiceProc(name, tmp_path, settings)
    procs.append(svc)
    return svc.start()


def problems(svc: ServiceProc) -> list[dict[str, Any]]:
    """Error lines, and the warning a broken batched write logs (the issue's DuplicatePreparedStatement)."""
    return [d for d in svc.logs() if d.get("level") in ("error", "critical")
            or "write failed" in str(d.get("message", ""))]


def pickup_s(url: str, schema: str, request_id: str) -> float | None:
    """Seconds from the row's insert to its claim, both by the server's clock (None: not claimed yet)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT extract(epoch FROM locked_at - created_at) FROM {}.outbox_commands "
                    "WHERE request_id = %s AND locked_at IS NOT NULL").format(sql.Identifier(schema)),
            (request_id,)).fetchone()
    return float(row[0]) if row else None


def pooled_statements_running(url: str) -> bool:
    """Statements of pooled gxsubmit connections (application_name 'gxsubmit') the server still runs."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gxsubmit' "
                           "AND state = 'active' AND pid <> pg_backend_pid()").fetchone()
    return bool(row and row[0])


def polling(svc: ServiceProc) -> dict[str, Any] | None:
    """/status once every worker polls (found that NOTIFY does not arrive), else None."""
    st = svc.status()
    workers = st.get("workers", {})
    return st if workers and all(w.get("wakeups") == "poll" for w in workers.values()) else None


def lone_row(pg_url: str, schema: str, prefix: str) -> float:
    enqueue_many(pg_url, schema, users(1, prefix), prefix=prefix)
    (delay,) = wait_for(lambda: (lambda d: (d,) if d is not None else None)(pickup_s(pg_url, schema,
                        f"{prefix}-0")), 90, interval=0.1, what="the lone row claimed")
    return float(delay)


def test_workload_and_a_lone_row_through_a_transaction_pooler(
    bouncer: PgBouncer, pg_url: str, schema: str, wallet: Path, tmp_path: Path, procs: list[Any]
) -> None:
    emu = EmulatorProc(wallet=wallet, workdir=tmp_path)
    procs.append(emu)
    emu.start()
    settings = service_settings(pooled_url(bouncer, pg_url), schema, wallet, emu,
                                GXSUBMIT_POLL_INTERVAL="30")
    svc = start(procs, tmp_path, "a", settings)
    svc.wait_ready()
    # Every worker finds that NOTIFY does not arrive, and says so once; /status says it too.
    st = wait_for(lambda: polling(svc), 60, interval=0.2, what="workers polling")
    assert len(st["warnings"]) == 1 and "GXSUBMIT_LISTEN_URL" in st["warnings"][0], st["warnings"]
    # A row right after that: the workers' claim loops were in their 30 s fallback wait when they
    # learnt it; they must not finish that wait first.
    assert lone_row(pg_url, schema, "first") < PICKUP_BOUND_S

    total = 1 + enqueue_many(pg_url, schema, users(300, "pool"), prefix="p")
    wait_for(lambda: all_finished(pg_url, schema, total), 120, interval=0.2, what="the workload finished")
    assert counts(pg_url, schema)["COMMITTED"] == total
    assert problems(svc) == [], problems(svc)
    st = svc.status()

    warned = svc.messages("NOTIFY does not reach the LISTEN connection")
    assert len(warned) == len(st["workers"]), warned

    delay = lone_row(pg_url, schema, "lone")
    assert delay < PICKUP_BOUND_S, delay
    wait_for(lambda: all_finished(pg_url, schema, total + 1), 60, interval=0.2, what="the lone row committed")
    assert problems(svc) == []
    result = audit(pg_url, schema, emu.ledger)
    assert result.exactly_once, result


def test_sigkilled_supervisor_is_taken_over_through_the_pooler(
    bouncer: PgBouncer, pg_url: str, schema: str, wallet: Path, tmp_path: Path, procs: list[Any]
) -> None:
    emu = EmulatorProc(wallet=wallet, workdir=tmp_path, extra=("--block-time", "1.0"))
    procs.append(emu)
    emu.start()
    pooled = pooled_url(bouncer, pg_url)
    settings = service_settings(pooled, schema, wallet, emu, GXSUBMIT_LEASE_SECONDS="3",
                                GXSUBMIT_POLL_INTERVAL="30")
    a = start(procs, tmp_path, "a", settings)
    a.wait_ready()
    total = enqueue_many(pg_url, schema, users(400, "kill"), prefix="k")
    wait_for(lambda: held_by(pg_url, schema, "a") >= 20 and counts(pg_url, schema)["COMMITTED"] > 0, 60,
             interval=0.05, what="work in flight")
    # Freeze a (supervisor and workers) and let the statements it already sent finish first: a batched
    # completion landing after the kill could otherwise leave nothing held to take over.
    assert a.proc is not None
    group = a.proc.pid

    def frozen_with_rows_held() -> bool:
        os.killpg(group, signal.SIGSTOP)
        wait_for(lambda: not pooled_statements_running(pg_url), 10, what="a's statements done")
        if held_by(pg_url, schema, "a") > 0:
            return True
        os.killpg(group, signal.SIGCONT)
        return False

    wait_for(frozen_with_rows_held, 30, interval=0.05, what="supervisor a frozen with rows held")
    os.killpg(group, signal.SIGKILL)
    a.proc.wait(10)
    assert held_by(pg_url, schema, "a") > 0  # the dead supervisor's rows wait for their leases

    # The second one LISTENs directly (GXSUBMIT_LISTEN_URL), everything else through the pooler.
    b = start(procs, tmp_path, "b", {**settings, "GXSUBMIT_LISTEN_URL": pg_url})
    b.wait_ready()
    wait_for(lambda: all_finished(pg_url, schema, total), 120, interval=0.2, what="all finished")
    c = counts(pg_url, schema)
    assert c["COMMITTED"] == total, c
    result = audit(pg_url, schema, emu.ledger)
    assert result.exactly_once, result
    assert problems(b) == [], problems(b)

    def notified() -> dict[str, Any] | None:
        st = b.status()
        workers = st.get("workers", {})
        return st if workers and all(w.get("wakeups") == "notify" for w in workers.values()) else None

    st = wait_for(notified, 60, interval=0.2, what="b's workers woken by NOTIFY")
    assert st["warnings"] == []
    assert lone_row(pg_url, schema, "lone") < PICKUP_BOUND_S
