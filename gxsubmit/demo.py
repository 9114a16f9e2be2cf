"""``gxsubmit demo``: the whole service on a laptop, with a GX workload and live progress.

Starts an embedded PostgreSQL (or uses ``--database-url``), a development wallet, the
Fabric Gateway emulator and a real ``gxsubmit supervise``, each as its own process; then
enqueues every catalogue command type in the order the chain needs (bootstrap, countries,
users, genesis, transfers ...), a bulk of creates and transfers, and a few bad commands
that must fail with a reason without holding up the rest. It ends with throughput,
latency, the failed rows and an audit of the ledger file against the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import orjson
import psycopg
from psycopg import sql

from gxsubmit import stack
from gxsubmit.catalog import Catalog, load_catalog
from gxsubmit.config import Config, ConfigError, load_config
from gxsubmit.dbroute import CONNECT_ARGS
from gxsubmit.exitcodes import RET_CONFIG, RET_FAIL, RET_OK
from gxsubmit.ledgeraudit import Audit, audit_ledger, read_ledger, report_sql

__all__ = ["Audit", "add_arguments", "audit_ledger", "read_ledger", "run"]

_QUIT = 130  # exit code after Ctrl-C, as a shell reports it
#: The demo runs one replica, so there is no rolling update to wait for: dead-letter unroutable rows soon.
UNROUTABLE_GRACE = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gxsubmit demo`` (the configuration flags are added by the CLI)."""
    group = parser.add_argument_group("demo")
    group.add_argument(
        "--commands",
        type=int,
        default=2000,
        metavar="N",
        help="about how many commands to enqueue (default 2000)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        help="serve the emulator over TLS with the dev wallet's server certificate",
    )
    group.add_argument("--keep", action="store_true", help="keep the work directory (database, ledger, logs)")
    group.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="give up if the workload has not finished after S seconds (default 120)",
    )
    group.add_argument(
        "--block-time",
        type=float,
        default=0.25,
        metavar="S",
        help="emulator block cut interval (default 0.25)",
    )
    group.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="work directory (default: a new temporary directory)",
    )


# --- the sample workload ---------------------------------------------------------------------


@dataclass
class Phase:
    """Commands enqueued together; the next phase starts when they have all finished.

    Each command is (type, payload, order key): commands of one phase that depend on each other share
    an order key, and gxsubmit runs them one after another in the order added."""

    title: str
    commands: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)

    def add(self, command_type: str, *, order_key: str | None = None, **payload: Any) -> None:
        self.commands.append((command_type, payload, order_key))


def _bio(user: str) -> str:
    return hashlib.sha256(user.encode()).hexdigest()


def build_workload(total: int, catalog: Catalog) -> list[Phase]:
    """Every routed command type at least once, in dependency order, plus a bulk and some poison.

    Transfers use disjoint account pairs so that a block never holds two transfers touching
    the same balance (which would be an MVCC conflict, retried, but noisy in a demo).
    """
    bulk = max(total - 40, 20)
    n_transfers = max(bulk // 5, 2)
    n_genesis = n_transfers + 4
    n_users = max(bulk - n_transfers - n_genesis, n_genesis + n_transfers + 4)
    users = [f"demo-user-{i:05d}" for i in range(n_users)]
    countries = ("MY", "DE", "US")

    boot = Phase("bootstrap and country data")
    boot.add("BOOTSTRAP_SYSTEM")
    boot.add(
        "INITIALIZE_COUNTRY_DATA",
        countriesData=[
            {"countryCode": "MY", "percentage": 40},
            {"countryCode": "DE", "percentage": 35},
            {"countryCode": "US", "percentage": 25},
        ],
    )

    setup = Phase(f"{n_users} users, organisations, treasuries")
    for i, user in enumerate(users):
        setup.add(
            "CREATE_USER",
            userId=user,
            biometricHash=_bio(user),
            nationality=countries[i % 3],
            age=20 + i % 50,
        )
    setup.add("CREATE_USER", userId="demo-bad-user", nationality="MY", age=30)  # no biometricHash
    setup.add("LEGACY_SEND_WELCOME_EMAIL", userId=users[0])  # no route: UNROUTABLE
    setup.add("APPOINT_ADMIN", newAdminId="demo-admin-2")
    setup.add("UPDATE_SYSTEM_PARAMETER", paramId="transferFeeBps", newValue=25)
    setup.add("ACTIVATE_TREASURY", countryCode="MY")
    setup.add("GOVT_CREATE_TREASURY", countryCode="DE")
    setup.add(
        "PROPOSE_ORGANIZATION",
        orgId="demo-org-1",
        orgName="Demo Cooperative",
        orgType="COOPERATIVE",
        stakeholderIds=users[:2],
    )
    setup.add("SUBMIT_PROPOSAL", targetParam="velocityTaxBps", newValue="50")
    setup.add("APPLY_FOR_LOAN", borrowerId=users[2], amount=500, collateralHash=_bio("collateral"))

    money = Phase(f"genesis for {n_genesis} users, membership, votes")
    for i in range(n_genesis):
        money.add("DISTRIBUTE_GENESIS", userId=users[i], nationality=countries[i % 3])
    money.add("MINT", toUserId=users[-1], amount=1000, remark="demo mint")
    money.add("ENDORSE_MEMBERSHIP", orgId="demo-org-1")
    money.add("ACTIVATE_ORGANIZATION", orgId="demo-org-1")
    money.add("DEFINE_AUTH_RULE", orgId="demo-org-1", rule={"threshold": 2, "approvers": users[:2]})
    money.add("INITIATE_MULTISIG_TX", orgId="demo-org-1", toUserId=users[3], amount=10, remark="supplies")
    money.add("CAST_VOTE", proposalId="demo-proposal-1", vote="YES")
    money.add("VOTE_ON_PROPOSAL", proposalId="demo-proposal-2", vote="NO")
    money.add("GOVT_ONBOARD_TREASURY", treasuryId="treasury-DE", verificationNotes="demo")
    money.add("GOVT_CREATE_ACCOUNT", treasuryId="treasury-DE", accountName="Health", budgetCode="H-1")
    money.add("APPROVE_LOAN", loanId="demo-loan-1")

    pay = Phase(f"{n_transfers} transfers and payments")
    for i in range(n_transfers):
        pay.add(
            "TRANSFER_TOKENS",
            fromUserId=users[i],
            toUserId=users[n_genesis + i],
            amount=1 + i % 7,
            remark="demo transfer",
            idempotencyKey=f"demo-tx-{i}",
        )
    t = n_transfers
    pay.add(
        "Q_SEND_PAY", fromUserId=users[t], toUserId=users[n_genesis + t], amount=5, qsendRequestCode="QS-1"
    )
    pay.add(
        "TRANSFER_TOKENS",
        fromUserId=users[t + 1],
        toUserId=users[n_genesis + t + 1],
        amount=10**12,
        remark="more than the balance",
    )  # chaincode rejection
    # Dependent commands written together, kept in order by an order key: the unfreeze after its freeze,
    # the transfer after the mint that funds it (without the key either could run first and fail).
    frozen, funded = users[n_genesis + t + 2], users[n_genesis + t + 3]
    pay.add("FREEZE_WALLET", order_key=frozen, userId=frozen, reason="demo")
    pay.add("UNFREEZE_WALLET", order_key=frozen, userId=frozen)
    pay.add("MINT", order_key=funded, toUserId=funded, amount=50, remark="demo mint, then spent")
    pay.add("TRANSFER_TOKENS", order_key=funded, fromUserId=funded, toUserId=f"{funded}-payee", amount=20,
            remark="spends the mint before it", idempotencyKey="demo-tx-funded")
    pay.add("APPROVE_MULTISIG_TX", pendingTxId="demo-ms-1")
    pay.add("EXECUTE_PROPOSAL", proposalId="demo-proposal-1")
    pay.add("APPLY_VELOCITY_TAX", accountId=users[4], taxRateBps=50)
    pay.add(
        "GOVT_ALLOCATE_FUNDS",
        fromEntityId="treasury-DE",
        toAccountId="acct-health",
        amount=1000,
        purpose="Q1 budget",
        idempotencyKey="alloc-1",
    )
    pay.add(
        "GOVT_DISBURSE_FUNDS",
        fromAccountId="acct-health",
        recipientId=users[5],
        recipientType="CITIZEN",
        amount=100,
        purpose="clinic visit",
        category="HEALTH",
        idempotencyKey="disb-1",
    )
    pay.add("GOVT_SYNC_BALANCE", treasuryId="treasury-DE")

    wrap = Phase("multisig execution, pause")
    wrap.add("EXECUTE_MULTISIG_TX", pendingTxId="demo-ms-1")
    wrap.add("PAUSE_SYSTEM", reason="maintenance window")
    resume = Phase("resume")
    resume.add("RESUME_SYSTEM")

    phases = [boot, setup, money, pay, wrap, resume]
    # Keep the workload valid for an operator's catalogue too: drop sample types it does not route
    # (the deliberate unroutable one stays).
    routed = set(catalog.all_types())
    for phase in phases:
        phase.commands = [c for c in phase.commands if c[0] in routed or c[0].startswith("LEGACY_")]
    return [p for p in phases if p.commands]


# --- the demo --------------------------------------------------------------------------------


class Demo:
    def __init__(self, args: argparse.Namespace, cfg: Config, out: TextIO = sys.stdout) -> None:
        self.args = args
        self.cfg = cfg
        self.out = out
        self.tty = out.isatty()
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gxsubmit-demo-")).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.catalog = load_catalog(cfg.catalog)
        self.pg: Any = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""
        self.schema = cfg.schema
        self.metrics_port = 0
        self.ledger = self.workdir / "ledger.jsonl"
        self.enqueued = 0
        self.note = ""
        self.unroutable_waiting: set[str] = set()
        self.started = 0.0
        self.drop_schema = False

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # -- components

    def start_postgres(self) -> None:
        if self.args.database_url:
            self.url = self.args.database_url
            if self.args.schema is None:
                self.schema = f"gxsubmit_demo_{uuid.uuid4().hex[:8]}"
                self.drop_schema = not self.args.keep
            self.say(f"  database   {self.url} (schema {self.schema})")
        else:
            from gxsubmit.pgembed import EmbeddedPostgres

            t0 = time.monotonic()
            self.pg = EmbeddedPostgres(self.workdir / "pgdata")
            self.pg.start()
            self.url = self.pg.url
            self.say(f"  database   embedded PostgreSQL at {self.url} ({time.monotonic() - t0:.1f}s)")

        async def migrate() -> int:
            from gxsubmit.outbox import migrate as do_migrate

            url = self.url
            async with await psycopg.AsyncConnection.connect(url, autocommit=True, **CONNECT_ARGS) as conn:
                return await do_migrate(conn, self.schema)

        version = asyncio.run(migrate())
        self.say(f"  schema     {self.schema} migrated (version {version})")

    def make_wallet(self) -> Path:
        from gxsubmit.devwallet import make_dev_wallet

        wallet = self.workdir / "wallet"
        make_dev_wallet(wallet, msp_id=self.cfg.msp_id, identities=dict(self.catalog.identities))
        self.say(f"  wallet     {wallet} ({', '.join(self.catalog.identities)})")
        return wallet

    def _log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start_emulator(self, wallet: Path) -> str:
        # Own session (stack.spawn): Ctrl-C in the terminal reaches only the demo, which then stops the
        # components in order (supervisor first, so that it can drain).
        proc, port = stack.start_emulator(
            wallet=wallet,
            ledger=self.ledger,
            ready_file=self.workdir / "emulator.port",
            log=self._log("emulator"),
            env=os.environ,
            insecure=not self.args.tls,
            extra=("--block-time", str(self.args.block_time)),
        )
        self.procs["emulator"] = proc
        target = f"127.0.0.1:{port}"
        self.say(f"  emulator   {target} ({'TLS' if self.args.tls else 'plaintext'}), ledger {self.ledger}")
        return target

    def start_supervisor(self, wallet: Path, gateway: str) -> None:
        from gxsubmit.pgembed import free_port

        self.metrics_port = (self.args.metrics_port and int(self.args.metrics_port)) or free_port()
        cfg = load_config(
            self.args,
            environ={},
            **{
                "database_url": self.url,
                "schema": self.schema,
                "wallet": wallet,
                "gateway": gateway,
                "insecure": not self.args.tls,
                "server_name": "localhost" if self.args.tls else None,
                "metrics_host": "127.0.0.1",
                "metrics_port": self.metrics_port,
                "runtime_dir": self.workdir / "run",
                "multiproc_dir": self.workdir / "run" / "metrics",
                "drain_timeout": min(self.cfg.drain_timeout, 10.0),
                "catalog": self.cfg.catalog,
                "worker_id": "demo",
                # The sample's unroutable row: one replica, no rollout to wait for, so a short grace.
                "unroutable_grace": UNROUTABLE_GRACE,
                "log_level": self.cfg.log_level,
            },
        )
        env = {**os.environ, **cfg.to_env()}
        log = self._log("service")
        self.procs["service"] = proc = stack.spawn(stack.supervise_argv(), env=env, log=log)
        self.say(
            f"  service    gxsubmit supervise, http://127.0.0.1:{self.metrics_port}/status "
            f"(logs: {self.workdir / 'service.log'})"
        )

        stack.wait_ready(proc, self.metrics_port, log=log, timeout=60)
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads(line)
                message = str(doc.get("message"))
                if message.startswith(("Successfully connected Fabric client", "All Fabric clients")):
                    count = f" (count={doc['count']})" if "count" in doc else ""
                    self.say(f"             {doc['message']}{count}")

    def http(self, path: str) -> tuple[int, bytes]:
        return stack.http_get(self.metrics_port, path)

    def enqueue(self, phase: Phase) -> None:
        async def insert() -> None:
            from gxsubmit.outbox import enqueue

            async with await psycopg.AsyncConnection.connect(self.url, **CONNECT_ARGS) as conn:
                async with conn.transaction():
                    for i, (ctype, payload, key) in enumerate(phase.commands):
                        await enqueue(
                            conn,
                            command_type=ctype,
                            payload=payload,
                            schema=self.schema,
                            request_id=f"demo-{self.enqueued + i}",
                            service="demo",
                            order_key=key,
                        )

        asyncio.run(insert())
        self.enqueued += len(phase.commands)

    def progress(self, conn: psycopg.Connection[Any]) -> dict[str, Counter[str]]:
        by_identity: dict[str, Counter[str]] = {name: Counter() for name in self.catalog.identities}
        for ctype, status, n in conn.execute(report_sql("progress", self.schema)).fetchall():
            route = self.catalog.route(ctype)
            who = route.identity if route is not None else "(unroutable)"
            if route is None and status == "PENDING":
                self.unroutable_waiting.add(ctype)
            bucket = by_identity.setdefault(who, Counter())
            bucket["PENDING" if status in ("CLAIMED", "SUBMITTED") else status] += n
        return by_identity

    def waiting_note(self, by_identity: Mapping[str, Counter[str]]) -> str:
        """Why the progress stands still when only rows no route serves are left (else "")."""
        stuck = by_identity.get("(unroutable)", Counter())["PENDING"]
        left = sum(c["PENDING"] for c in by_identity.values())
        if not stuck or stuck != left:
            return ""
        from gxsubmit.supervisor import STATS_INTERVAL, STATS_INTERVAL_BUSY

        types = ", ".join(sorted(self.unroutable_waiting)) or "?"
        return (f"waiting: {stuck} {types} row{'s' if stuck != 1 else ''} that no live replica routes; "
                f"the supervisor dead-letters {'them' if stuck != 1 else 'it'} (UNROUTABLE) at its first "
                f"queue-statistics pass after {UNROUTABLE_GRACE:g}s without a route (passes run every "
                f"{STATS_INTERVAL:g}s while the queue looked idle, {STATS_INTERVAL_BUSY:g}s while rows move)")

    def render(self, by_identity: Mapping[str, Counter[str]], title: str, redraw: bool) -> int:
        lines = []
        total: Counter[str] = Counter()
        for who, c in by_identity.items():
            total.update(c)
            lines.append(
                f"  {who:<20} committed {c['COMMITTED']:>6}   failed {c['FAILED']:>4}   "
                f"pending {c['PENDING']:>6}"
            )
        elapsed = time.monotonic() - self.started
        rate = total["COMMITTED"] / elapsed if elapsed > 0 else 0.0
        lines.append(
            f"  {'total':<20} committed {total['COMMITTED']:>6}   failed {total['FAILED']:>4}   "
            f"pending {total['PENDING']:>6}   {rate:7.0f} cmd/s  [{title}]"
        )
        self.note = self.waiting_note(by_identity)
        lines.append(f"  {self.note}")  # always a line, so the redraw moves up the same count
        self.unroutable_waiting.clear()
        if self.tty:
            if redraw:
                self.out.write(f"\x1b[{len(lines)}A")
            self.out.write("".join(f"\x1b[2K{line}\n" for line in lines))
            self.out.flush()
        return total["COMMITTED"] + total["FAILED"]

    def run_workload(self, phases: Sequence[Phase]) -> bool:
        self.started = time.monotonic()
        deadline = self.started + self.args.timeout
        drawn = False
        last_plain = 0.0
        with psycopg.connect(self.url, autocommit=True, **CONNECT_ARGS) as conn:
            for n, phase in enumerate(phases, 1):
                self.enqueue(phase)
                if not self.tty:
                    self.say(f"phase {n}/{len(phases)}: {phase.title} ({len(phase.commands)} commands)")
                while True:
                    done = self.render(self.progress(conn), f"{n}/{len(phases)} {phase.title}", drawn)
                    drawn = True
                    if not self.tty and (time.monotonic() - last_plain >= 1.0 or done >= self.enqueued):
                        last_plain = time.monotonic()
                        note = f" ({self.note})" if self.note else ""
                        elapsed = time.monotonic() - self.started
                        self.say(f"  {done}/{self.enqueued} finished, {elapsed:.1f}s{note}")
                    if done >= self.enqueued:
                        break
                    if time.monotonic() > deadline:
                        self.say(
                            f"timed out after {self.args.timeout:.0f}s with {self.enqueued - done} commands "
                            "unfinished"
                        )
                        return False
                    if self.procs["service"].poll() is not None:
                        self.say("the service exited unexpectedly; see its log")
                        return False
                    time.sleep(0.5)
        if self.tty:
            self.render(self.progress_once(), "done", drawn)
        return True

    def progress_once(self) -> dict[str, Counter[str]]:
        with psycopg.connect(self.url, autocommit=True, **CONNECT_ARGS) as conn:
            return self.progress(conn)

    def summary(self) -> bool:
        with psycopg.connect(self.url, autocommit=True, **CONNECT_ARGS) as conn:
            count, pcts, span = conn.execute(report_sql("latency", self.schema)).fetchone() or (
                0,
                None,
                None,
            )
            failed = conn.execute(report_sql("failed", self.schema), {"limit": 20}).fetchall()
            keys, keyed, out_of_order = conn.execute(report_sql("order_keys", self.schema)).fetchone() or (
                0, 0, 0)
            audit = audit_ledger(conn, self.schema, self.ledger)
        self.say()
        if count and pcts and span:
            p50, p95, p99 = (float(x) for x in pcts)
            self.say(
                f"committed {count} commands in {span:.1f}s: {count / span:.0f} commands/s; "
                f"latency created->committed p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms"
            )
        roles = Counter(
            f"{tx.get('role')}" for tx in read_ledger(self.ledger) if tx.get("validation_code") == "VALID"
        )
        if roles:
            self.say(
                "ledger VALID transactions by submitter role: "
                + ", ".join(f"{role} {n}" for role, n in sorted(roles.items()))
            )
        self.say(
            f"failed {len(failed)} command(s) (expected: a bad payload, an unknown type, a transfer "
            "beyond the balance):"
        )
        for ctype, _request_id, code, error in failed:
            # The gateway's details carry the chaincode's own message; the summary before them is generic.
            reason = error.split("[details: ", 1)[-1].rstrip("]")
            self.say(f"  {ctype:<26} {code:<18} {reason[:160]}")
        if keyed:
            self.say(
                f"order keys: {keyed} commands on {keys} keys, "
                + ("each committed in a later block than the one written before it" if not out_of_order
                   else f"{out_of_order} committed no later than the one written before it: OUT OF ORDER")
            )
        verdict = "exactly once" if audit.exactly_once else "MISMATCH"
        self.say(
            f"audit: {audit.committed_rows} COMMITTED rows, {audit.valid_txs} VALID ledger transactions, "
            f"{len(audit.missing)} missing, {len(audit.duplicated)} duplicated, {len(audit.unexpected)} "
            f"unexpected, {audit.unresolved} unresolved: {verdict}"
        )
        return audit.exactly_once

    # -- teardown

    def stop(self) -> None:
        service = self.procs.get("service")
        if service is not None and service.poll() is None:
            rc = stack.stop(service, self.cfg.drain_timeout + 15, group=True)
            self.say(f"service stopped (exit {rc})")
        stack.stop(self.procs.get("emulator"), 10)
        if self.drop_schema and self.url:
            with contextlib.suppress(psycopg.Error), \
                    psycopg.connect(self.url, autocommit=True, **CONNECT_ARGS) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop()
        if self.args.keep or self.args.workdir:
            self.say(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self) -> int:
        t0 = time.monotonic()
        self.say("gxsubmit demo: PostgreSQL outbox -> Fabric Gateway (emulated), exactly once")
        try:
            self.start_postgres()
            wallet = self.make_wallet()
            gateway = self.start_emulator(wallet)
            self.start_supervisor(wallet, gateway)
            phases = build_workload(self.args.commands, self.catalog)
            total = sum(len(p.commands) for p in phases)
            types = len({c[0] for p in phases for c in p.commands})
            self.say(f"enqueueing {total} commands of {types} types in {len(phases)} phases")
            finished = self.run_workload(phases)
            ok = self.summary() and finished
            self.say(f"demo finished in {time.monotonic() - t0:.1f}s")
            return RET_OK if ok else RET_FAIL
        except KeyboardInterrupt:
            self.say("\ninterrupted, shutting down")
            return _QUIT
        except stack.StackError as exc:
            self.say(f"demo failed: {exc}")
            self.args.keep = True
            return RET_FAIL
        finally:
            with _sigint_ignored():
                self.stop()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """A second Ctrl-C must not interrupt the teardown and leave servers behind."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def run(args: argparse.Namespace) -> int:
    """Body of ``gxsubmit demo``."""
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        print(f"gxsubmit demo: configuration error: {exc}", file=sys.stderr)
        return RET_CONFIG
    if args.commands < 1:
        print("gxsubmit demo: --commands must be at least 1", file=sys.stderr)
        return RET_CONFIG
    return Demo(args, cfg).run()
