"""The fleet's pure logic: the verify checklist, error classification, summary line, catalogue digest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gxsubmit.catalog import load_catalog
from gxsubmit.config import Config, load_config
from gxsubmit.fleet import FleetReporter, Replica, _classify, catalog_digest, summary_line
from gxsubmit.verify import Flow, evaluate, report


def ident(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"state": "running", "gateway": True, "database": True, "in_flight": 0,
                           "committed": 5, "error_code": None, "error_kind": None, "error": None,
                           "error_age_s": None, "last_commit_age_s": 2.0}
    doc.update(over)
    return doc


def rep(name: str, node: str, **over: Any) -> Replica:
    base = Replica(worker_id=name, node=node, host=name, pid=1, version="1.0", catalog_digest="abc",
                   catalog_source="default", routed_types=("MINT",),
                   identities={"org1-admin": ident(), "org1-partner-api": ident()}, db_ok=True,
                   db_error_code=None, db_error_age_s=None, stale_after_s=30.0, stopped=False,
                   heartbeat_age_s=1.0, uptime_s=100.0, live=True)
    return replace(base, **over)


IDLE = Flow(due=0, oldest_due_s=None, in_flight=0, failed=3, failed_by_code={"UNROUTABLE": 3},
            failed_recent=0)


def by_name(checks: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in checks}


def test_a_healthy_fleet_passes_every_check() -> None:
    checks = evaluate([rep("a", "n1"), rep("b", "n2")], IDLE, want=2)
    assert all(c.ok for c in checks), report(checks)
    assert report(checks).splitlines()[-1] == "verify: all 7 checks passed"
    assert "3 FAILED rows (UNROUTABLE 3)" in by_name(checks)["dead"].evidence


def test_a_missing_replica_is_named_with_its_node_and_silence() -> None:
    gone = rep("b", "n2", live=False, heartbeat_age_s=45.0)
    c = by_name(evaluate([rep("a", "n1"), gone], IDLE, want=2))["replicas"]
    assert not c.ok
    assert "1 live, want 2" in c.evidence and "missing: b on n2 (no heartbeat for 45s" in c.evidence


def test_two_replicas_on_one_node_fail_the_spread_check() -> None:
    c = by_name(evaluate([rep("a", "n1"), rep("b", "n1")], IDLE, want=2))["nodes"]
    assert not c.ok and c.evidence == "a and b share node n1"


def test_an_identity_not_connected_is_named_with_its_error() -> None:
    broken = ident(state="config_error", gateway=False, error_code="CONFIG_ERROR", error_kind="config",
                   error="wallet/org1-admin-cert: file not found", error_age_s=3.0)
    b = rep("b", "n2", identities={"org1-admin": broken, "org1-partner-api": ident()})
    c = by_name(evaluate([rep("a", "n1"), b], IDLE, want=2))["identities"]
    assert not c.ok
    assert c.evidence == "b/org1-admin config_error: CONFIG_ERROR wallet/org1-admin-cert: file not found"


def test_mixed_versions_or_catalogues_say_rollout_in_progress() -> None:
    c = by_name(evaluate([rep("a", "n1"), rep("b", "n2", catalog_digest="def")], IDLE, want=2))["version"]
    assert not c.ok and c.evidence.startswith("rollout in progress: ")
    assert "catalogue abc on a" in c.evidence and "catalogue def on b" in c.evidence


def test_work_must_flow() -> None:
    stuck = Flow(due=4, oldest_due_s=200.0, in_flight=0, failed=0, failed_by_code={}, failed_recent=0)
    c = by_name(evaluate([rep("a", "n1")], stuck, want=1, max_due_age=60))["flow"]
    assert not c.ok and "oldest due row waits longer than 1m" in c.evidence
    waiting = Flow(due=4, oldest_due_s=1.0, in_flight=2, failed=0, failed_by_code={}, failed_recent=0)
    quiet = rep("a", "n1", identities={"x": ident(last_commit_age_s=None)})
    c = by_name(evaluate([quiet], waiting, want=1))["flow"]
    assert not c.ok and "no commit in the last 5m" in c.evidence
    assert by_name(evaluate([rep("a", "n1")], waiting, want=1))["flow"].ok


def test_recent_database_or_gateway_errors_fail_older_ones_and_command_errors_do_not() -> None:
    recent = ident(error_code="GATEWAY_UNAVAILABLE", error_kind="gateway", error="peer down",
                   error_age_s=30.0)
    c = by_name(evaluate([rep("a", "n1", identities={"x": recent})], IDLE, want=1, window=300))["errors"]
    assert not c.ok and c.evidence.startswith("a/x GATEWAY_UNAVAILABLE 31s ago: peer down")
    old = ident(error_code="GATEWAY_UNAVAILABLE", error_kind="gateway", error="peer down", error_age_s=900.0)
    payload = ident(error_code="PAYLOAD_INVALID", error_kind="command", error="bad", error_age_s=1.0)
    assert by_name(evaluate([rep("a", "n1", identities={"x": old, "y": payload})], IDLE, want=1))["errors"].ok
    db = rep("a", "n1", db_error_code="DB_UNAVAILABLE", db_error_age_s=10.0)
    assert not by_name(evaluate([db], IDLE, want=1))["errors"].ok


def test_no_replica_at_all_fails_with_a_hint() -> None:
    checks = by_name(evaluate([], IDLE, want=None))
    assert not checks["replicas"].ok and "no replica has registered" in checks["replicas"].evidence


def test_classify_worker_states() -> None:
    assert _classify({"state": "running", "db_ok": True, "gateway_ok": True}) is None
    assert _classify({"state": "starting", "gateway_ok": False}) is None  # still connecting: no error yet
    assert _classify({"state": "config_error", "reason": "no key"}) == ("CONFIG_ERROR", "config", "no key")
    lost = _classify({"state": "running", "db_ok": False, "last_error": "database connection lost: x"})
    assert lost is not None and lost[:2] == ("DB_UNAVAILABLE", "database")
    gw = _classify({"state": "running", "db_ok": True, "gateway_ok": False})
    assert gw is not None and gw[:2] == ("GATEWAY_UNAVAILABLE", "gateway")
    cmd = _classify({"state": "running", "db_ok": True, "gateway_ok": True,
                     "last_error": "ENDORSE_FAILED: chaincode said no"})
    assert cmd is not None and cmd[:2] == ("ENDORSE_FAILED", "command")


def test_summary_line() -> None:
    both = summary_line([rep("a", "n1"), rep("b", "n2")])
    assert both == "fleet: 2 live replicas on 2 nodes, version 1.0, catalogue abc"
    mixed = summary_line([rep("a", "n1"), rep("b", "n2", version="1.1"), rep("c", "n3", live=False)])
    assert "rollout in progress: 1.0/abc; 1.1/abc" in mixed and "gone (no heartbeat): c 1s ago" in mixed


def test_catalogue_digest_tells_catalogues_apart(tmp_path: Path) -> None:
    lacking = tmp_path / "c.toml"
    lacking.write_text('extends = "default"\nremove = ["CREATE_USER"]\n')
    same = tmp_path / "d.toml"
    same.write_text('extends = "default"\n')
    default = catalog_digest(load_catalog(None))
    assert catalog_digest(load_catalog(same)) == default
    assert catalog_digest(load_catalog(lacking)) != default


def test_runtime_directory_defaults_to_one_per_worker_id(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    a = load_config(environ={**env, "GXSUBMIT_WORKER_ID": "pod-a"})
    b = load_config(environ={**env, "GXSUBMIT_WORKER_ID": "pod-b"})
    assert a.runtime_dir != b.runtime_dir and a.runtime_dir.parent == b.runtime_dir.parent
    assert a.runtime_dir.name == "pod-a"
    odd = load_config(environ={**env, "GXSUBMIT_WORKER_ID": "../x y/z"})
    assert odd.runtime_dir.parent == a.runtime_dir.parent and "/" not in odd.runtime_dir.name
    explicit = load_config(environ={**env, "GXSUBMIT_WORKER_ID": "pod-a", "GXSUBMIT_RUNTIME_DIR": "/run/gx"})
    assert explicit.runtime_dir == Path("/run/gx")


def test_the_reporter_keeps_when_an_error_began_and_when_the_last_commit_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    clock = [1000.0]
    monkeypatch.setattr("gxsubmit.fleet.time.time", lambda: clock[0])
    r = FleetReporter(Config(worker_id="w", fleet_interval=2.0), lambda: load_catalog(None))
    assert r.due_in() > 0  # no snapshot yet: nothing to report
    down = {"state": "running", "db_ok": True, "gateway_ok": False, "last_error": "UNAVAILABLE: peer",
            "committed": 0}
    r.observe({"x": down}, True, None)
    clock[0] += 30
    r.observe({"x": down}, True, None)  # the same error: it began 30 s ago, not now
    doc = r._identities(clock[0])["x"]
    assert (doc["error_code"], doc["error_kind"]) == ("GATEWAY_UNAVAILABLE", "gateway")
    assert doc["error_age_s"] == 30.0
    assert doc["gateway"] is False and doc["last_commit_age_s"] is None  # no commit seen since start
    up = {**down, "gateway_ok": True, "last_error": None, "committed": 6}
    clock[0] += 5
    r.observe({"x": up}, True, None)
    clock[0] += 2
    doc = r._identities(clock[0])["x"]
    assert doc["gateway"] is True and doc["last_commit_age_s"] == 2.0
    assert doc["error_code"] == "GATEWAY_UNAVAILABLE" and doc["error_age_s"] == 37.0  # the last error stays
    assert r.stale_after == 6.0 and r.due_in() == 0.0
