"""Real processes for acceptance tests: the emulator and ``gxsubmit supervise`` as subprocesses.

Every process runs in its own session (process group), so a test can SIGKILL a supervisor
together with its workers, and teardown can never leave a stray behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from waiting import wait_for  # tests/ is on sys.path (rootdir conftest)

from gxsubmit import stack
from gxsubmit.ledgeraudit import Audit, audit_ledger, read_ledger
from gxsubmit.pgembed import free_port

#: Legacy names config.py also reads: a developer's shell must not leak into the service under test.
_LEGACY = {
    "DATABASE_URL",
    "FABRIC_WALLET_PATH",
    "BATCH_SIZE",
    "POLL_INTERVAL",
    "MAX_RETRIES",
    "LOCK_TIMEOUT",
    "METRICS_PORT",
    "WORKER_ID",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
    "LOG_LEVEL",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "FABRIC_PEER_ENDPOINT",
    "FABRIC_MSP_ID",
}


def run_sync(coro: Any) -> Any:
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_") and k not in _LEGACY}


def _stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """SIGKILL: the whole group at once (a crash); SIGTERM: 10 s to stop, then the group is killed."""
    if sig == signal.SIGKILL:
        stack.kill_group(proc)
    else:
        stack.stop(proc, 10, group=True)


@dataclass
class EmulatorProc:
    wallet: Path
    workdir: Path
    extra: tuple[str, ...] = ()
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    insecure: bool = True  # False: TLS with the wallet's server-cert/server-key

    @property
    def ledger(self) -> Path:
        return self.workdir / "ledger.jsonl"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart on the same port and ledger)."""
        self.proc, self.port = stack.start_emulator(
            wallet=self.wallet,
            ledger=self.ledger,
            ready_file=self.workdir / "emulator.port",
            log=self.workdir / "emulator.log",
            env=clean_env(),
            listen=f"127.0.0.1:{self.port}",
            insecure=self.insecure,
            extra=self.extra,
        )

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, signal.SIGTERM)

    def valid_txs(self) -> list[dict[str, Any]]:
        return [tx for tx in read_ledger(self.ledger) if tx.get("validation_code") == "VALID"]


@dataclass
class ServiceProc:
    """One ``gxsubmit supervise`` with its own runtime directory, worker id and port."""

    name: str
    workdir: Path
    settings: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def env(self) -> dict[str, str]:
        env = clean_env()
        env.update(
            {
                "GXSUBMIT_METRICS_HOST": "127.0.0.1",
                "GXSUBMIT_METRICS_PORT": str(self.port),
                "GXSUBMIT_RUNTIME_DIR": str(self.workdir / f"{self.name}-run"),
                "GXSUBMIT_WORKER_ID": self.name,
                "GXSUBMIT_INSECURE": "true",
            }
        )
        env.update(self.settings)
        return env

    def start(self) -> ServiceProc:
        self.proc = stack.spawn(stack.supervise_argv(), env=self.env(), log=self.log_path)
        return self

    def http(self, path: str) -> tuple[int, bytes]:
        return stack.http_get(self.port, path, timeout=3)

    def status(self) -> dict[str, Any]:
        code, body = self.http("/status")
        return json.loads(body) if code == 200 else {}

    def readyz(self) -> tuple[int, str]:
        code, body = self.http("/readyz")
        return code, body.decode(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            return self.readyz()[0] == 200

        try:
            wait_for(ready, timeout, interval=0.1, what=f"{self.name} ready")
        except AssertionError as exc:  # say why it is not ready: the readiness body and the log's end
            raise AssertionError(f"{exc}\n/readyz: {self.readyz()}\n{self.tail()}") from None

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    def messages(self, prefix: str) -> list[dict[str, Any]]:
        return [d for d in self.logs() if str(d.get("message", "")).startswith(prefix)]

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        code, body = self.http("/metrics")
        assert code == 200
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            have = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
            if all(have.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    def terminate(self, timeout: float) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill_group(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)


def service_settings(
    pg_url: str, schema: str, wallet: Path, emulator: EmulatorProc, **overrides: str
) -> dict[str, str]:
    settings = {
        "GXSUBMIT_DATABASE_URL": pg_url,
        "GXSUBMIT_SCHEMA": schema,
        "GXSUBMIT_WALLET": str(wallet),
        "GXSUBMIT_GATEWAY": emulator.target,
        "GXSUBMIT_LEASE_SECONDS": "5",
        "GXSUBMIT_POLL_INTERVAL": "0.5",
        "GXSUBMIT_HEARTBEAT_INTERVAL": "0.5",
        "GXSUBMIT_HEARTBEAT_TIMEOUT": "20",
        "GXSUBMIT_DRAIN_TIMEOUT": "6",
        "GXSUBMIT_BACKOFF_BASE": "0.2",
        "GXSUBMIT_BACKOFF_CAP": "2",
        "GXSUBMIT_BREAKER_COOLDOWN": "1",
        "GXSUBMIT_CONNECT_TIMEOUT": "2",
        "GXSUBMIT_COMMIT_TIMEOUT": "10",
        "GXSUBMIT_MAX_ATTEMPTS": "50",
        # A lone replica: no other can route what its catalogue lacks, so no grace to wait out.
        "GXSUBMIT_UNROUTABLE_GRACE": "0",
    }
    settings.update(overrides)
    return settings


# --- database helpers ------------------------------------------------------------------------


def enqueue_many(url: str, schema: str, commands: Iterable[tuple[Any, ...]], prefix: str) -> int:
    """Enqueue (type, payload) or (type, payload, order key) items in one transaction."""
    from gxsubmit.outbox import enqueue

    items = list(commands)

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
            for i, (ctype, payload, *key) in enumerate(items):
                await enqueue(
                    conn,
                    command_type=ctype,
                    payload=payload,
                    schema=schema,
                    request_id=f"{prefix}-{i}",
                    service="acceptance",
                    order_key=key[0] if key else None,
                )

    run_sync(go())
    return len(items)


def users(n: int, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    import hashlib

    return [
        (
            "CREATE_USER",
            {
                "userId": f"{prefix}-{i:05d}",
                "biometricHash": hashlib.sha256(f"{prefix}{i}".encode()).hexdigest(),
                "nationality": "MY",
                "age": 30,
            },
        )
        for i in range(n)
    ]


def counts(url: str, schema: str) -> Counter[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            sql.SQL("SELECT status, count(*) FROM {}.outbox_commands GROUP BY status").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    return Counter({status: int(n) for status, n in rows})


def rows(url: str, schema: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(sql.SQL("SELECT * FROM {}.outbox_commands ORDER BY seq").format(sql.Identifier(schema)))
        return list(cur.fetchall())


def held_by(url: str, schema: str, worker_id: str) -> int:
    """Rows still CLAIMED/SUBMITTED by any process of supervisor ``worker_id``."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {}.outbox_commands WHERE status IN ('CLAIMED', 'SUBMITTED') "
                "AND locked_by LIKE %s"
            ).format(sql.Identifier(schema)),
            (worker_id + ":%",),
        ).fetchone()
    return int(row[0]) if row else 0


def all_finished(url: str, schema: str, total: int) -> bool:
    c = counts(url, schema)
    return c["COMMITTED"] + c["FAILED"] >= total


def audit(url: str, schema: str, ledger: Path) -> Audit:
    with psycopg.connect(url, autocommit=True) as conn:
        return audit_ledger(conn, schema, ledger)


# --- fixtures (imported by the test modules) -------------------------------------------------

import pytest  # noqa: E402


@pytest.fixture
def procs() -> Any:
    """Registry of started processes; every one is killed (whole group) at teardown."""
    started: list[EmulatorProc | ServiceProc] = []
    yield started
    for p in reversed(started):
        if isinstance(p, ServiceProc):
            p.kill_group()
        else:
            p.stop()


@pytest.fixture
def emulator(wallet: Path, tmp_path: Path, procs: list[Any]) -> EmulatorProc:
    emu = EmulatorProc(wallet=wallet, workdir=tmp_path, extra=("--block-time", "0.3"))
    procs.append(emu)
    emu.start()
    return emu
