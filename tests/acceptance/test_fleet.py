"""The fleet in one view, with real supervisors: registry, ``fleet``, ``verify`` and mixed-version safety.

Each replica is a real ``gxsubmit supervise`` (with its workers) on a node name of its own; ``fleet`` and
``verify`` run as the operator runs them, as separate processes reading the database.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from harness import (
    EmulatorProc,
    ServiceProc,
    all_finished,
    clean_env,
    counts,
    enqueue_many,
    service_settings,
    users,
)
from psycopg import sql
from psycopg.types.json import Jsonb
from waiting import wait_for

IDENTITIES = ("org1-super-admin", "org1-admin", "org1-partner-api")
#: An older release's catalogue: the same, without CREATE_USER (the type a newer release adds).
WITHOUT_CREATE_USER = 'extends = "default"\nremove = ["CREATE_USER"]\n'
WITH_CREATE_USER = 'extends = "default"\n'


def cli(pg_url: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env.update(GXSUBMIT_DATABASE_URL=pg_url, GXSUBMIT_SCHEMA=schema)
    return subprocess.run([sys.executable, "-m", "gxsubmit", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def enqueue_due_later(pg_url: str, schema: str, commands: list[tuple[str, dict[str, Any]]],
                      delay_s: float) -> int:
    """Insert PENDING rows that are due only ``delay_s`` from now (as a retry scheduled later would be)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for ctype, payload in commands:
            conn.execute(sql.SQL(
                "INSERT INTO {}.outbox_commands (service, command_type, request_id, payload, next_attempt_at)"
                " VALUES ('test', %s, %s, %s, now() + make_interval(secs => %s))"
            ).format(sql.Identifier(schema)), (ctype, str(payload["userId"]), Jsonb(payload), delay_s))
    return len(commands)


def live(pg_url: str, schema: str) -> set[str]:
    out = cli(pg_url, schema, "fleet", "--json")
    assert out.returncode == 0, out.stderr
    return {r["worker_id"] for r in json.loads(out.stdout)["replicas"] if r["live"]}


def replica(procs: list[Any], tmp_path: Path, name: str, node: str, settings: dict[str, str],
            **extra: str) -> ServiceProc:
    env = {**settings, "GXSUBMIT_NODE_NAME": node, "GXSUBMIT_FLEET_INTERVAL": "0.5", **extra}
    svc = ServiceProc(name, tmp_path, env)
    procs.append(svc)
    return svc.start()


def test_two_nodes_one_lacking_a_type_commit_it_all_then_fleet_and_verify(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    older = tmp_path / "older.toml"
    older.write_text(WITHOUT_CREATE_USER)
    # No grace at all: only the registry keeps rep-a from dead-lettering what rep-b routes.
    base = service_settings(pg_url, schema, wallet, emulator, GXSUBMIT_UNROUTABLE_GRACE="0")
    a = replica(procs, tmp_path, "rep-a", "node-a", base, GXSUBMIT_CATALOG=str(older))
    b = replica(procs, tmp_path, "rep-b", "node-b", base)
    a.wait_ready()
    b.wait_ready()
    wait_for(lambda: live(pg_url, schema) == {"rep-a", "rep-b"}, 30, interval=0.3, what="both registered")

    # Rows of the type rep-a's catalogue lacks commit through rep-b; rep-a's sweep fails none of them.
    # Some are due only later, so rep-a's statistics (every 15 s when idle) surely see them PENDING and
    # its sweep runs over them (before the registry, that sweep dead-lettered them).
    total = enqueue_many(pg_url, schema, users(30, "mixed"), prefix="mixed")
    total += enqueue_due_later(pg_url, schema, users(10, "later"), delay_s=35)

    def a_saw_them_pending() -> bool:
        assert "FAILED" not in counts(pg_url, schema), counts(pg_url, schema)
        return bool(a.status().get("queue", {}).get("by_status_type", {}).get("PENDING/CREATE_USER"))

    wait_for(a_saw_them_pending, 35, interval=0.2, what="rep-a's statistics show the rows PENDING")
    wait_for(lambda: all_finished(pg_url, schema, total), 90, interval=0.2, what="rows finished")
    assert counts(pg_url, schema) == {"COMMITTED": 40}
    assert not a.messages("Failed unroutable commands")
    assert a.status()["queue"]["unroutable_failed"] == 0

    # fleet: one line per replica, every identity's state on it
    out = cli(pg_url, schema, "fleet")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("rep-")}
    assert set(lines) == {"rep-a", "rep-b"}, out.stdout
    assert "rep-a live node=node-a" in lines["rep-a"] and "rep-b live node=node-b" in lines["rep-b"]
    for line in lines.values():
        for name in IDENTITIES:
            assert f"{name}=ok(" in line, line
    assert "rollout in progress" in out.stdout.splitlines()[-1]
    print(f"\n$ gxsubmit fleet\n{out.stdout}")

    # verify: the catalogues differ, so the fleet is mid-rollout
    out = cli(pg_url, schema, "verify", "--replicas", "2")
    assert out.returncode == 1, out.stdout
    version = next(line for line in out.stdout.splitlines() if " version " in line)
    assert version.startswith("FAIL") and "rollout in progress" in version, out.stdout

    # rep-a takes the newer catalogue (SIGHUP reload): one catalogue across the fleet, every check passes
    older.write_text(WITH_CREATE_USER)
    assert a.proc is not None
    before = {name: w["pid"] for name, w in a.status()["workers"].items()}
    a.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:  # the reload restarts the workers one at a time; wait for the last
        workers = a.status().get("workers", {})
        fresh = all(workers.get(n, {}).get("pid") not in (None, pid) for n, pid in before.items())
        return fresh and a.readyz()[0] == 200

    wait_for(reloaded, 90, interval=0.3, what="rep-a's rolling reload done")

    def passes() -> str | None:
        res = cli(pg_url, schema, "verify", "--replicas", "2")
        return res.stdout if res.returncode == 0 else None

    text = wait_for(passes, 90, interval=0.5, what="verify --replicas 2 passes")
    checks = text.splitlines()[:-1]
    assert len(checks) == 7 and all(c.startswith("PASS  ") for c in checks), text
    print(f"\n$ gxsubmit verify --replicas 2\n{text}")
    doc = json.loads(cli(pg_url, schema, "verify", "--replicas", "2", "--json").stdout)
    assert doc["ok"] is True and len(doc["checks"]) == 7, doc["checks"]
    status = cli(pg_url, schema, "status")
    assert status.returncode == 0 and status.stdout.splitlines()[-1].startswith(
        "fleet: 2 live replicas on 2 nodes, version "), status.stdout

    # rep-b is SIGKILLed (supervisor and workers): verify names it once its heartbeat is stale
    b.kill_group()

    def names_missing() -> str | None:
        res = cli(pg_url, schema, "verify", "--replicas", "2")
        return res.stdout if res.returncode == 1 and "missing: rep-b on node-b" in res.stdout else None

    killed = time.monotonic()
    text = wait_for(names_missing, 30, interval=0.3, what="verify names the killed replica")
    print(f"\n$ gxsubmit verify --replicas 2   # {time.monotonic() - killed:.1f}s after SIGKILL of rep-b "
          f"(fleet interval 0.5 s, so gone after 1.5 s)\n{text}")
    first = text.splitlines()[0]
    assert first.startswith("FAIL  replicas") and "1 live, want 2" in first, text


def test_verify_names_the_identity_whose_wallet_files_are_missing(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    partial = tmp_path / "partial-wallet"
    shutil.copytree(wallet, partial)
    (partial / "org1-admin-cert").unlink()
    (partial / "org1-admin-key").unlink()
    base = service_settings(pg_url, schema, partial, emulator)
    replica(procs, tmp_path, "rep-c", "node-c", base)

    def names_identity() -> str | None:
        res = cli(pg_url, schema, "verify", "--replicas", "1")
        line = next((x for x in res.stdout.splitlines() if " identities " in x), "")
        others_up = "rep-c/org1-super-admin" not in line and "rep-c/org1-partner-api" not in line
        named = res.returncode == 1 and "rep-c/org1-admin config_error" in line
        return res.stdout if named and others_up else None

    text = wait_for(names_identity, 60, interval=0.5, what="verify names the identity without wallet files")
    print(f"\n$ gxsubmit verify --replicas 1\n{text}")
    line = next(x for x in text.splitlines() if " identities " in x)
    # the one identity named, with the reason; the replica's other identities connected, so not named
    assert line.startswith("FAIL") and "CONFIG_ERROR" in line, text
    assert "org1-admin-cert: file not found" in line, text


def test_rollout_and_rollback_of_a_catalogue_dead_letter_nothing(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    """docs/operations.md "Rolling out a catalogue change", with maxSurge 1 and maxUnavailable 0."""
    older, newer = tmp_path / "older.toml", tmp_path / "newer.toml"
    older.write_text(WITHOUT_CREATE_USER)
    newer.write_text(WITH_CREATE_USER)
    # One identity per replica keeps seven supervisors affordable on a shared machine.
    base = service_settings(pg_url, schema, wallet, emulator, GXSUBMIT_UNROUTABLE_GRACE="60",
                            GXSUBMIT_IDENTITIES="org1-partner-api")
    enqueued = 0

    def enqueue(prefix: str, n: int = 8) -> None:
        nonlocal enqueued
        enqueued += enqueue_many(pg_url, schema, users(n, prefix), prefix=prefix)

    def up(name: str, node: str, catalog: Path) -> ServiceProc:
        svc = replica(procs, tmp_path, name, node, base, GXSUBMIT_CATALOG=str(catalog))
        svc.wait_ready()
        wait_for(lambda: name in live(pg_url, schema), 30, interval=0.3, what=f"{name} registered")
        return svc

    def down(svc: ServiceProc) -> None:
        assert svc.terminate(60) == 0, svc.tail()

    old1, old2 = up("old-1", "node-a", older), up("old-2", "node-b", older)
    enqueue("before")  # the producer writes the new type before any replica routes it: the rows wait
    # Roll out: one new replica more, then one old one less, twice.
    new1 = up("new-1", "node-c", newer)
    enqueue("rollout-1")
    down(old1)
    new2 = up("new-2", "node-a", newer)
    enqueue("rollout-2")
    down(old2)
    wait_for(lambda: all_finished(pg_url, schema, enqueued), 90, interval=0.2, what="rollout done")
    assert counts(pg_url, schema) == {"COMMITTED": enqueued}

    # Roll back the same way: the newer replicas finish what they hold; rows written after the last of
    # them left wait out the grace period instead of being dead-lettered at once.
    old3 = up("old-3", "node-b", older)
    enqueue("rollback-1")
    down(new1)
    up("old-4", "node-c", older)
    enqueue("rollback-2")
    down(new2)
    enqueue("after")  # no live replica routes CREATE_USER now
    swept_after = old3.status()["queue"]["updated_at"]
    # two statistics passes of a replica that lacks the type (each may sweep) and nothing failed
    wait_for(lambda: (old3.status()["queue"]["updated_at"] or 0) > swept_after + 3.5, 30, interval=0.3,
             what="old-3 swept twice")
    assert "FAILED" not in counts(pg_url, schema)
    assert old3.status()["queue"]["unroutable_failed"] == 0

    # Rolling forward again within the grace period commits them.
    up("new-3", "node-a", newer)
    wait_for(lambda: all_finished(pg_url, schema, enqueued), 90, interval=0.2, what="every row finished")
    assert counts(pg_url, schema) == {"COMMITTED": enqueued}


class SharedHost(ServiceProc):
    """A supervisor without a runtime-directory setting, on a host whose XDG_RUNTIME_DIR others share."""

    def env(self) -> dict[str, str]:
        env = super().env()
        del env["GXSUBMIT_RUNTIME_DIR"]
        env["XDG_RUNTIME_DIR"] = str(self.workdir / "xdg")
        return env


def test_two_supervisors_of_different_worker_ids_share_a_host_and_one_id_is_refused(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    base = service_settings(pg_url, schema, wallet, emulator, GXSUBMIT_IDENTITIES="org1-partner-api")
    first, second = SharedHost("unit-1", tmp_path, base), SharedHost("unit-2", tmp_path, base)
    procs.extend([first, second])
    first.start()
    second.start()
    first.wait_ready()
    second.wait_ready()  # before: "Another supervisor uses this runtime directory", exit 78

    same = SharedHost("unit-1-again", tmp_path, {**base, "GXSUBMIT_WORKER_ID": "unit-1"})
    procs.append(same)
    same.start()
    assert same.proc is not None and same.proc.wait(60) == 78, same.tail()
    errors = [m for m in same.logs() if m.get("level") == "error"]
    assert len(errors) == 1, same.tail()
    assert errors[0]["message"].startswith("Another supervisor uses this runtime directory")
    assert errors[0]["worker_id"] == "unit-1"
    assert first.readyz()[0] == 200  # the running one is untouched
