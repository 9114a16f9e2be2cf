"""A throw-away PgBouncer for tests and benchmarks: the pooler most deployments put in front of PostgreSQL.

It runs the system's ``pgbouncer`` binary (Debian: /usr/sbin/pgbouncer) with a configuration of its own
in a private directory, on a free port of 127.0.0.1 and with trust authentication, in front of one
PostgreSQL server. PgBouncer refuses to run as root, so as root it runs as ``nobody``. Nothing of the
system's PgBouncer service (its configuration, port 6432) is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

from gxsubmit.pgembed import free_port

__all__ = ["PgBouncer", "PgBouncerError", "find_pgbouncer"]

_RUN_AS = "nobody"


class PgBouncerError(RuntimeError):
    """The pooler could not be started."""


def find_pgbouncer() -> str | None:
    """The pgbouncer binary, or None when it is not installed."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None)


class PgBouncer:
    """One PgBouncer process in front of ``server_host:server_port``, any database name, ``pool_mode``."""

    def __init__(
        self,
        server_host: str,
        server_port: int,
        *,
        pool_mode: str = "transaction",
        pool_size: int = 20,
        users: tuple[str, ...] = ("postgres",),
    ) -> None:
        self.server = (server_host, server_port)
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.users = users
        self.port = 0
        self.dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def logfile(self) -> Path:
        assert self.dir is not None
        return self.dir / "pgbouncer.log"

    def start(self, timeout: float = 30.0) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise PgBouncerError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.dir = Path(tempfile.mkdtemp(prefix="gxsubmit-pgbouncer-"))
        self.dir.chmod(0o755)  # readable by the unprivileged user PgBouncer runs as under root
        self.port = free_port()
        host, port = self.server
        (self.dir / "userlist.txt").write_text("".join(f'"{u}" ""\n' for u in self.users))
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
        )
        user = _RUN_AS if os.geteuid() == 0 else None
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(
                [binary, str(self.dir / "pgbouncer.ini")], stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, user=user, start_new_session=True)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PgBouncerError(f"pgbouncer exited with {self._proc.returncode}: {self._tail()}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.05)
        self.stop()
        raise PgBouncerError(f"pgbouncer not ready after {timeout}s: {last}; {self._tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)  # SIGINT: close at once (SIGTERM would wait for clients)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-1500:].strip()
        except OSError:
            return "no log"

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
