"""The service as operators run it: ``gxsubmit supervise`` with real workers, PostgreSQL and the emulator."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from harness import (
    EmulatorProc,
    ServiceProc,
    all_finished,
    audit,
    counts,
    enqueue_many,
    held_by,
    rows,
    service_settings,
    users,
)
from waiting import wait_for

from gxsubmit.catalog import load_catalog
from gxsubmit.demo import build_workload

IDENTITIES = ("org1-super-admin", "org1-admin", "org1-partner-api")

WRONG_ROUTE = """
extends = "default"

# Deliberately wrong: FreezeWallet needs gx_super_admin; no `role` key, so the catalogue loads.
[types.FREEZE_WALLET_VIA_PARTNER]
identity = "org1-partner-api"
function = "TokenomicsContract:FreezeWallet"
args = [{ field = "userId" }, { field = "reason", default = "test" }]
"""


def start(procs: list[Any], tmp_path: Path, name: str, settings: dict[str, str]) -> ServiceProc:
    svc = ServiceProc(name, tmp_path, settings)
    procs.append(svc)
    return svc.start()


def test_every_type_through_its_role_poison_isolated_and_startup_logged(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    catalog_file = tmp_path / "catalog.toml"
    catalog_file.write_text(WRONG_ROUTE)
    catalog = load_catalog(catalog_file)
    svc = start(
        procs,
        tmp_path,
        "svc",
        service_settings(pg_url, schema, wallet, emulator, GXSUBMIT_CATALOG=str(catalog_file)),
    )
    svc.wait_ready()

    # Startup: one line per identity, then the operators' summary line with its count, once.
    connected = {m["message"] for m in svc.logs() if m.get("process") == "worker"}
    for name in IDENTITIES:
        assert f"Successfully connected Fabric client for {name}" in connected
    summary = svc.messages("All Fabric clients initialized successfully")
    assert len(summary) == 1 and summary[0]["count"] == 3

    # Given the GX sample workload (every routed type, poison included) plus a wrong-role route
    phases = build_workload(60, catalog)
    total = 0
    for n, phase in enumerate(phases):
        commands = list(phase.commands)
        if n == 1:
            commands.append(("FREEZE_WALLET_VIA_PARTNER", {"userId": "demo-user-00001"}, None))
        total += enqueue_many(pg_url, schema, commands, prefix=f"p{n}")
        wait_for(functools.partial(all_finished, pg_url, schema, total), 60, interval=0.1, what=f"phase {n}")

    by_id = {r["fabric_tx_id"]: r for r in rows(pg_url, schema) if r["status"] == "COMMITTED"}
    ledger = {tx["tx_id"]: tx for tx in emulator.valid_txs()}
    # Then every routed catalogue type committed, submitted by the identity holding its role
    committed_types = {r["command_type"] for r in by_id.values()}
    default = load_catalog(None)
    assert set(default.all_types()) <= committed_types
    for tx_id, row in by_id.items():
        route = catalog.route(row["command_type"])
        assert route is not None
        tx = ledger[tx_id]
        assert tx["mspid"] == "Org1MSP"
        assert tx["role"] == catalog.identities[route.identity], row["command_type"]

    # And the poison failed with its reason without blocking anything else
    failed = {r["command_type"]: r for r in rows(pg_url, schema) if r["status"] == "FAILED"}
    assert set(failed) == {
        "CREATE_USER",
        "LEGACY_SEND_WELCOME_EMAIL",
        "TRANSFER_TOKENS",
        "FREEZE_WALLET_VIA_PARTNER",
    }
    assert failed["CREATE_USER"]["error_code"] == "PAYLOAD_INVALID"
    assert "biometricHash" in failed["CREATE_USER"]["error"]
    assert failed["LEGACY_SEND_WELCOME_EMAIL"]["error_code"] == "UNROUTABLE"
    assert "insufficient balance" in failed["TRANSFER_TOKENS"]["error"]
    assert "gx_super_admin" in failed["FREEZE_WALLET_VIA_PARTNER"]["error"]

    result = audit(pg_url, schema, emulator.ledger)
    assert result.exactly_once, result

    # /metrics: one series per identity, and the supervisor's own gauges
    for name in IDENTITIES:
        assert svc.metric("gxsubmit_commands_committed_total", identity=name) > 0
        assert svc.metric("gxsubmit_worker_up", identity=name) == 1
    assert svc.metric("gxsubmit_commands_committed_total") == len(by_id)
    wait_for(
        lambda: svc.metric("gxsubmit_outbox_rows", status="COMMITTED") == len(by_id),
        15,
        what="outbox gauge refreshed",
    )


def test_sigterm_drains_in_time_and_leaves_nothing_claimed(
    pg_url: str, schema: str, wallet: Path, tmp_path: Path, procs: list[Any]
) -> None:
    # Slow blocks keep hundreds of commands in flight when the signal arrives.
    emu = EmulatorProc(wallet=wallet, workdir=tmp_path, extra=("--block-time", "2.0"))
    procs.append(emu)
    emu.start()
    svc = start(
        procs, tmp_path, "svc", service_settings(pg_url, schema, wallet, emu, GXSUBMIT_DRAIN_TIMEOUT="4")
    )
    svc.wait_ready()
    total = enqueue_many(pg_url, schema, users(600, "drain"), prefix="d")
    wait_for(lambda: held_by(pg_url, schema, "svc") > 50, 30, what="work in flight")

    # When: SIGTERM. Then: exit 0 within the drain timeout (plus process start-up slack) ...
    assert svc.terminate(timeout=4 + 4) == 0
    # ... and no row is left CLAIMED or SUBMITTED by any of its processes
    assert held_by(pg_url, schema, "svc") == 0
    assert svc.messages("Received SIGTERM, shutting down gracefully")

    # A new supervisor finishes the rest, exactly once.
    svc2 = start(procs, tmp_path, "svc2", service_settings(pg_url, schema, wallet, emu))
    svc2.wait_ready()
    wait_for(lambda: all_finished(pg_url, schema, total), 90, interval=0.2, what="all finished")
    assert counts(pg_url, schema)["COMMITTED"] == total
    result = audit(pg_url, schema, emu.ledger)
    assert result.exactly_once, result


def test_config_error_is_not_restarted_and_others_keep_working(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    broken = tmp_path / "wallet"
    shutil.copytree(wallet, broken)
    key = broken / "org1-admin-key"
    saved = key.read_bytes()
    key.unlink()
    svc = start(procs, tmp_path, "svc", service_settings(pg_url, schema, broken, emulator))

    def reported() -> str:
        code, text = svc.readyz()
        return text if code == 503 and "org1-admin: configuration error" in text else ""

    text = wait_for(reported, 60, what="config error on /readyz")
    assert "org1-admin-key" in text

    # The other identities work meanwhile.
    total = enqueue_many(
        pg_url, schema, [*users(20, "cfg"), ("MINT", {"toUserId": "cfg-00001", "amount": 5})], prefix="c"
    )
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == total, 60, what="others committed")
    status = svc.status()["workers"]["org1-admin"]
    assert status["state"] == "config_error" and status["restarts"] == 0
    # The supervisor's own view of the table (refreshed every few seconds): exact on a small table.
    queue = wait_for(
        lambda: (q := svc.status().get("queue", {})).get("by_status", {}).get("COMMITTED") == total and q,
        30, what="/status queue counts")
    assert queue["committed_estimated"] is False and queue["retrying_by_code"] == {}
    booted = [m for m in svc.messages("Booting worker") if m.get("worker") == "org1-admin"]
    assert len(booted) == 1  # not restarted in a loop

    # SIGHUP after fixing the wallet retries it.
    key.write_bytes(saved)
    os.chmod(key, 0o600)
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGHUP)
    svc.wait_ready(60)
    enqueue_many(pg_url, schema, [("MINT", {"toUserId": "cfg-00002", "amount": 5})], prefix="c2")
    enqueue_many(pg_url, schema, [("APPROVE_LOAN", {"loanId": "L1"})], prefix="c3")
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == total + 2, 60, what="org1-admin works after HUP")


def test_metrics_are_summed_across_workers_and_survive_a_killed_worker(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    svc = start(procs, tmp_path, "svc", service_settings(pg_url, schema, wallet, emulator))
    svc.wait_ready()
    enqueue_many(pg_url, schema, users(30, "m1"), prefix="m1")
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == 30, 60, what="first batch")
    wait_for(lambda: svc.metric("gxsubmit_commands_committed_total", identity="org1-partner-api") == 30, 10)

    # When the partner-api worker is SIGKILLed
    old = svc.status()["workers"]["org1-partner-api"]["pid"]
    os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        w = svc.status()["workers"]["org1-partner-api"]
        return w["pid"] not in (None, old) and w["state"] == "running"

    wait_for(restarted, 30, what="worker restarted")
    enqueue_many(pg_url, schema, users(20, "m2"), prefix="m2")
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == 50, 60, what="second batch")
    # Then the dead worker's counts are kept and the new one's are added
    wait_for(
        lambda: svc.metric("gxsubmit_commands_committed_total", identity="org1-partner-api") == 50,
        10,
        what="counters summed across the restart",
    )
    assert svc.metric("gxsubmit_worker_restarts_total", identity="org1-partner-api") == 1
    assert svc.metric("gxsubmit_worker_up", identity="org1-partner-api") == 1


def test_hung_worker_is_aborted_and_systemd_is_notified(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@gxsubmit-test-{os.getpid()}-{tmp_path.name}"
    sock.bind("\0" + name[1:])
    sock.settimeout(0.2)
    settings = service_settings(
        pg_url,
        schema,
        wallet,
        emulator,
        GXSUBMIT_HEARTBEAT_TIMEOUT="2",
        NOTIFY_SOCKET=name,
        WATCHDOG_USEC="400000",
    )
    got: list[str] = []
    done = threading.Event()

    def collect() -> None:  # systemd's side: read every datagram as it comes
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                got.extend(sock.recv(4096).decode().splitlines())

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    svc = start(procs, tmp_path, "svc", settings)

    def received(prefix: str) -> bool:
        return any(m.startswith(prefix) for m in list(got))

    wait_for(lambda: received("READY=1"), 60, what="READY=1")
    wait_for(lambda: received("WATCHDOG=1"), 10, what="WATCHDOG=1")

    # When a worker stops heartbeating (frozen), it is aborted/killed and replaced
    old = svc.status()["workers"]["org1-partner-api"]["pid"]
    os.kill(old, signal.SIGSTOP)

    def replaced() -> bool:
        w = svc.status()["workers"]["org1-partner-api"]
        return w["pid"] not in (None, old) and w["state"] == "running"

    wait_for(replaced, 30, what="hung worker replaced")
    assert [m for m in svc.messages("Worker timed out") if m.get("worker") == "org1-partner-api"]
    enqueue_many(pg_url, schema, users(5, "hang"), prefix="h")
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == 5, 30, what="new worker works")

    assert svc.terminate(timeout=15) == 0
    wait_for(lambda: received("STOPPING=1"), 5, what="STOPPING=1")
    done.set()
    reader.join(2)
    sock.close()


def test_second_signal_stops_at_once_and_releases_rows(
    pg_url: str, schema: str, wallet: Path, tmp_path: Path, procs: list[Any]
) -> None:
    emu = EmulatorProc(wallet=wallet, workdir=tmp_path, extra=("--block-time", "5.0"))
    procs.append(emu)
    emu.start()
    svc = start(
        procs, tmp_path, "svc", service_settings(pg_url, schema, wallet, emu, GXSUBMIT_DRAIN_TIMEOUT="60")
    )
    svc.wait_ready()
    enqueue_many(pg_url, schema, users(300, "twice"), prefix="t")
    wait_for(lambda: counts(pg_url, schema)["SUBMITTED"] > 20, 30, what="submitted work waiting for a block")
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: svc.messages("Received SIGTERM"), 10, what="drain started")
    svc.proc.send_signal(signal.SIGINT)
    # Far less than the 60 s drain timeout: the second signal does not wait for commits.
    assert svc.proc.wait(20) == 0
    assert svc.messages("Received SIGINT again, stopping immediately")
    assert held_by(pg_url, schema, "svc") == 0


def _catalog_with(identities: dict[str, str], types: list[str]) -> str:
    """A stand-alone catalogue: the given identities and the packaged definitions of ``types``."""
    import re

    from gxsubmit.catalog import _default_text

    base = _default_text()
    out = ['[defaults]\nchannel = "gxchannel"\nchaincode = "gxtv3"\n\n[identities]']
    out += [f'"{name}" = "{role}"' for name, role in identities.items()]
    for name in types:
        block = re.search(rf"^\[types\.{name}\]\n.*?(?=^\[|^# ----|\Z)", base, re.M | re.S)
        assert block is not None, name
        out.append("\n" + block.group(0).strip())
    return "\n".join(out) + "\n"


def test_sighup_adds_retires_and_brings_back_identities(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, procs: list[Any], tmp_path: Path
) -> None:
    super_admin = {"org1-super-admin": "gx_super_admin"}
    partner = {"org1-partner-api": "gx_partner_api"}
    admin = {"org1-admin": "gx_admin"}
    catalog_file = tmp_path / "catalog.toml"
    catalog_file.write_text(_catalog_with({**super_admin, **partner}, ["CREATE_USER", "MINT"]))
    settings = service_settings(pg_url, schema, wallet, emulator, GXSUBMIT_CATALOG=str(catalog_file))
    svc = start(procs, tmp_path, "svc", settings)
    svc.wait_ready()
    before = svc.status()["workers"]
    assert set(before) == {"org1-super-admin", "org1-partner-api"}
    first = [*users(5, "h1"), ("MINT", {"toUserId": "h1-00001", "amount": 5})]
    total = enqueue_many(pg_url, schema, first, "h1")
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == total, 60, what="first catalogue works")

    def settled(names: set[str], not_pids: dict[str, int]) -> dict[str, Any] | None:
        """The reload is over: exactly ``names`` run, each connected and none with an old pid."""
        code, _ = svc.readyz()
        workers = svc.status().get("workers", {})
        live = {n: w for n, w in workers.items() if w["pid"] is not None}
        if code != 200 or set(live) != names:
            return None
        if any(w["state"] != "running" or w["pid"] == not_pids.get(n) for n, w in live.items()):
            return None
        return live

    # When an identity joins the catalogue: its worker starts once (not started, then restarted by the
    # rolling restart), the others are restarted one at a time to load the new routes.
    catalog_file.write_text(
        _catalog_with({**super_admin, **partner, **admin}, ["CREATE_USER", "MINT", "APPROVE_LOAN"])
    )
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGHUP)
    old = {n: w["pid"] for n, w in before.items()}
    live = wait_for(lambda: settled(set(old) | set(admin), old), 60, what="reload with org1-admin")
    booted = [m for m in svc.messages("Booting worker") if m.get("worker") == "org1-admin"]
    assert [m["worker_pid"] for m in booted] == [live["org1-admin"]["pid"]]
    assert svc.messages("Identity joined the catalogue, starting its worker")
    total += enqueue_many(pg_url, schema, [("APPROVE_LOAN", {"loanId": "H-L1"})], "h2")
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == total, 60, what="new identity's type committed")
    approvals = [tx for tx in emulator.valid_txs() if tx["role"] == "gx_admin"]
    assert len(approvals) == 1

    # When an identity leaves: its worker drains and stops, is not restarted, and readiness ignores it.
    catalog_file.write_text(_catalog_with({**super_admin, **admin}, ["MINT", "APPROVE_LOAN"]))
    svc.proc.send_signal(signal.SIGHUP)
    gone = live["org1-partner-api"]["pid"]
    live = wait_for(
        lambda: settled({"org1-super-admin", "org1-admin"}, {n: w["pid"] for n, w in live.items()}),
        60,
        what="reload without org1-partner-api",
    )
    wait_for(lambda: not _alive(gone), 30, what="retired worker exited")
    assert svc.messages("Identity left the catalogue, stopping its worker")
    assert svc.metric("gxsubmit_worker_up", identity="org1-partner-api") == 0
    assert svc.status()["workers"]["org1-partner-api"]["state"] == "stopped"

    # When it comes back: its worker starts again and its commands commit.
    catalog_file.write_text(
        _catalog_with({**super_admin, **partner, **admin}, ["CREATE_USER", "MINT", "APPROVE_LOAN"])
    )
    svc.proc.send_signal(signal.SIGHUP)
    previous = {n: w["pid"] for n, w in live.items()} | {"org1-partner-api": gone}
    wait_for(
        lambda: settled(set(old) | set(admin), previous),
        60,
        what="reload with org1-partner-api back",
    )
    total += enqueue_many(pg_url, schema, users(3, "h3"), "h3")
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == total, 60, what="returned identity works")
    assert counts(pg_url, schema)["FAILED"] == 0
    result = audit(pg_url, schema, emulator.ledger)
    assert result.exactly_once, result


def test_rotated_gateway_tls_ca_is_loaded_without_a_restart(
    pg_url: str, schema: str, wallet: Path, procs: list[Any], tmp_path: Path
) -> None:
    from gxsubmit.devwallet import SERVER_CERT, SERVER_KEY, _issue_tls, new_ca, write_cert, write_key
    from gxsubmit.wallet import TLSCA_CERT

    peer, client = tmp_path / "peer", tmp_path / "client"  # the peer's files and gxsubmit's wallet
    shutil.copytree(wallet, peer)
    shutil.copytree(wallet, client)
    emu = EmulatorProc(wallet=peer, workdir=tmp_path, insecure=False)
    procs.append(emu)
    emu.start()
    settings = service_settings(pg_url, schema, client, emu, GXSUBMIT_INSECURE="false")
    svc = start(procs, tmp_path, "svc", settings)
    svc.wait_ready()
    total = enqueue_many(pg_url, schema, users(5, "t1"), "t1")
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == total, 60, what="committed over TLS")
    assert svc.status()["workers"]["org1-admin"]["restarts"] == 0

    # Given the peer restarted with a certificate from a new TLS CA: the workers cannot reconnect.
    tlsca2 = new_ca("tlsca2.org1.example.com", org="org1.example.com")
    server_cert, server_key = _issue_tls(tlsca2, "localhost", server=True)
    emu.stop()
    write_cert(peer / TLSCA_CERT, tlsca2.cert_pem)
    write_cert(peer / SERVER_CERT, server_cert)
    write_key(peer / SERVER_KEY, server_key)
    emu.start()
    def refused() -> str:
        code, text = svc.readyz()
        line = next((ln for ln in text.splitlines() if ln.startswith("org1-admin: ")), "")
        return line if code == 503 and "gateway unavailable" in line and "handshake" in line.lower() else ""

    wait_for(refused, 60, what="old CA refused, and /readyz says why")
    total += enqueue_many(pg_url, schema, users(5, "t2"), "t2")

    # When the new CA reaches gxsubmit's wallet (an atomic replace, as a renewed Secret arrives)
    old = {n: w["pid"] for n, w in svc.status()["workers"].items()}
    write_cert(client / TLSCA_CERT, tlsca2.cert_pem)

    # Then each worker is restarted to load it, reconnects, and the waiting commands commit once.
    svc.wait_ready(60)
    wait_for(lambda: counts(pg_url, schema)["COMMITTED"] == total, 60, what="committed after rotation")
    assert svc.messages("Gateway TLS files changed; restarting workers one at a time to load them")
    new = {n: w["pid"] for n, w in svc.status()["workers"].items()}
    assert all(new[n] != old[n] for n in IDENTITIES)
    result = audit(pg_url, schema, emu.ledger)
    assert result.exactly_once, result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
