"""Readiness reasons, from slots and parsed worker statuses alone (no processes, no HTTP)."""

from __future__ import annotations

from dataclasses import replace

from test_workerstatus import STATUS

from gxsubmit.supervisor.health import readiness
from gxsubmit.supervisor.slot import Slot, State


def slot(name: str, **kw: object) -> Slot:
    s = Slot(name, "role", state=State.RUNNING, pid=100)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def reasons(*slots: Slot, draining: bool = False, db_ok: bool | None = True,
            db_error: str | None = None) -> tuple[bool, dict[str, str]]:
    return readiness({s.identity: s for s in slots}, draining=draining, db_ok=db_ok, db_error=db_error,
                     now=10.0)


def test_ready_when_every_worker_is_connected() -> None:
    assert reasons(slot("a", status=STATUS), slot("b", status=STATUS)) == (True, {"a": "ok", "b": "ok"})


def test_each_unready_worker_says_why() -> None:
    ok, why = reasons(
        slot("starting"),
        slot("db", status=replace(STATUS, db_ok=False, last_error="refused")),
        slot("gw", status=replace(STATUS, gateway_ok=False)),
        slot("breaker", status=replace(STATUS, breaker_open=True, last_error="UNAVAILABLE")),
        slot("cfg", state=State.CONFIG_ERROR, pid=None, last_exit="exit 78", reason="no key"),
        slot("dead", state=State.BACKOFF, pid=None, last_exit="exit 1", respawn_at=12.5),
        slot("gone", retiring=True),
    )
    assert not ok
    assert why == {
        "breaker": "circuit breaker open: UNAVAILABLE",
        "cfg": "configuration error (exit 78): no key",
        "db": "database unavailable: refused",
        "dead": "worker not running (exit 1), restart in 2.5s",
        "gw": "gateway unavailable",
        "starting": "starting",
    }


def test_draining_and_an_unreachable_outbox_are_not_ready() -> None:
    assert reasons(slot("a", status=STATUS), draining=True) == (False, {"a": "draining"})
    assert reasons(slot("a", status=replace(STATUS, draining=True))) == (False, {"a": "draining"})
    assert reasons(slot("a", status=STATUS), db_ok=False, db_error="timeout") == (
        False, {"a": "ok", "outbox": "database unavailable: timeout"})
    assert reasons() == (False, {})
