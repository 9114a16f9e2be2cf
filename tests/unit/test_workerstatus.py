"""The worker <-> supervisor contract: what the worker writes is what the supervisor reads."""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import orjson
import pytest

from gxsubmit.supervisor.health import readiness
from gxsubmit.supervisor.slot import Slot, State
from gxsubmit.workerstatus import WorkerStatus, owner_id, read_status, status_path, write_status

STATUS = WorkerStatus(
    pid=os.getpid(), identity="org1-admin", ts=1700000000.5, started_at=1700000000.0, ready=True,
    db_ok=True, gateway_ok=True, breaker_open=False, in_flight=3, committed=10, failed=1,
    last_error=None, draining=False, cert_not_after="2030-01-01T00:00:00+00:00", commit_stream=True,
    wakeups="notify", wakeup_warning=None)


def test_the_writers_file_parses_into_the_readers_type(tmp_path: Path) -> None:
    path = status_path(tmp_path / "run", "org1-admin")
    write_status(path, STATUS)
    status, mtime = read_status(path, os.getpid())
    assert status == STATUS
    assert mtime == path.stat().st_mtime
    assert [p.name for p in path.parent.iterdir()] == ["worker-org1-admin.json"]  # no temp file left


def test_the_supervisor_judges_readiness_from_the_parsed_status(tmp_path: Path) -> None:
    path = status_path(tmp_path, "org1-admin")
    write_status(path, replace(STATUS, db_ok=False, last_error="connection refused"))
    slot = Slot("org1-admin", "admin", state=State.RUNNING, pid=os.getpid())
    slot.status, _ = read_status(path, os.getpid())
    ok, reasons = readiness({"org1-admin": slot}, draining=False, db_ok=True, db_error=None, now=0.0)
    assert not ok
    assert reasons == {"org1-admin": "database unavailable: connection refused"}


def test_a_status_of_another_pid_is_not_a_heartbeat(tmp_path: Path) -> None:
    path = status_path(tmp_path, "org1-admin")
    write_status(path, STATUS)
    assert read_status(path, os.getpid() + 1) == (None, 0.0)
    assert read_status(tmp_path / "absent.json", os.getpid()) == (None, 0.0)


@pytest.mark.parametrize("doc", [
    b"not json",
    b"[1, 2]",
    orjson.dumps({k: v for k, v in asdict(STATUS).items() if k != "db_ok"}),
    orjson.dumps({**asdict(STATUS), "db_ok": "yes"}),
    orjson.dumps({**asdict(STATUS), "in_flight": True}),
    orjson.dumps({**asdict(STATUS), "last_error": 5}),
])
def test_a_malformed_status_reads_as_absent(tmp_path: Path, doc: bytes) -> None:
    path = status_path(tmp_path, "org1-admin")
    path.write_bytes(doc)
    assert read_status(path, os.getpid()) == (None, 0.0)
    with pytest.raises(ValueError):
        WorkerStatus.from_json(doc)


def test_unknown_fields_are_ignored_and_integral_times_accepted() -> None:
    doc = {**asdict(STATUS), "ts": 1700000001, "added_later": 1}
    status = WorkerStatus.from_json(orjson.dumps(doc))
    assert status.ts == 1700000001.0 and isinstance(status.ts, float)


def test_owner_id_names_one_process() -> None:
    assert owner_id("host-a", "org1-admin", 42) == "host-a:org1-admin:42"
    assert owner_id("host-a", "org1-admin", 42) != owner_id("host-a", "org1-admin", 43)
