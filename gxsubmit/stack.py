"""Start the emulator and ``gxsubmit supervise`` as child processes, and stop them.

The one launcher behind the demo (:mod:`gxsubmit.demo`), the acceptance tests' harness and the
bench: each used to hold its own copy of the argv, the ready-file wait, the /readyz wait and the
SIGTERM-then-SIGKILL stop. What differs between them (environment, log names, which settings)
stays with the caller; how a process is started, found ready and stopped lives here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "StackError",
    "emulator_argv",
    "http_get",
    "kill_group",
    "spawn",
    "start_emulator",
    "stop",
    "supervise_argv",
    "wait_bound",
    "wait_ready",
    "wait_until",
]

T = TypeVar("T")


class StackError(RuntimeError):
    """A component exited or did not become ready; the message names it and its log."""


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    cwd: Path | None = None,
    new_session: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout+stderr appended to ``log``.

    ``new_session``: its own process group, so a terminal's Ctrl-C reaches only the caller and
    :func:`stop` can kill a supervisor together with its workers."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            list(argv),
            env=dict(env),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=new_session,
        )


def stop(proc: subprocess.Popen[bytes] | None, grace: float, *, group: bool = False) -> int | None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL (the whole group with ``group``); the exit code.

    Only the process we started (and, with ``group``, its own session), by id."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            if group:
                kill_group(proc)
            else:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
    return proc.returncode


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started with its own session together with everything in it (a crash)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def wait_until(
    proc: subprocess.Popen[bytes],
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    log: Path,
    interval: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns a true value; StackError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise StackError(f"{log.stem} exited ({proc.returncode}) before {what}; see {log}")
        if time.monotonic() > deadline:
            raise StackError(f"{log.stem}: no {what} after {timeout:g}s; see {log}")
        time.sleep(interval)


# --- the emulator --------------------------------------------------------------------------------


def emulator_argv(
    *,
    wallet: Path,
    ledger: Path,
    ready_file: Path,
    listen: str = "127.0.0.1:0",
    insecure: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """``gxsubmit emulator`` writing its bound address to ``ready_file`` (port 0: a free one)."""
    return [
        sys.executable, "-m", "gxsubmit", "emulator",
        "--listen", listen,
        "--wallet", str(wallet),
        "--ledger", str(ledger),
        *(["--insecure"] if insecure else []),
        "--ready-file", str(ready_file),
        *extra,
    ]


def wait_bound(proc: subprocess.Popen[bytes], ready_file: Path, *, log: Path, timeout: float = 30.0) -> int:
    """The port the emulator bound, from its ready file."""

    def port() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            text = ready_file.read_text().strip()
            return int(text.rsplit(":", 1)[-1]) if text else None
        return None

    return wait_until(proc, port, timeout=timeout, what="listening port", log=log, interval=0.02)


def start_emulator(
    *,
    wallet: Path,
    ledger: Path,
    ready_file: Path,
    log: Path,
    env: Mapping[str, str],
    listen: str = "127.0.0.1:0",
    insecure: bool = True,
    extra: Sequence[str] = (),
    cwd: Path | None = None,
    new_session: bool = True,
    timeout: float = 30.0,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the emulator and wait until it listens: (process, port)."""
    ready_file.unlink(missing_ok=True)
    argv = emulator_argv(wallet=wallet, ledger=ledger, ready_file=ready_file, listen=listen,
                         insecure=insecure, extra=extra)
    proc = spawn(argv, env=env, log=log, cwd=cwd, new_session=new_session)
    try:
        return proc, wait_bound(proc, ready_file, log=log, timeout=timeout)
    except BaseException:
        stop(proc, 5.0, group=new_session)
        raise


# --- the supervisor ------------------------------------------------------------------------------


def supervise_argv() -> list[str]:
    """``gxsubmit supervise``; its configuration comes from the environment (``Config.to_env``)."""
    return [sys.executable, "-m", "gxsubmit", "supervise"]


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET on the supervisor's HTTP endpoint; (0, b"") when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def wait_ready(
    proc: subprocess.Popen[bytes], port: int, *, log: Path, timeout: float = 60.0, interval: float = 0.05
) -> None:
    """Until ``/readyz`` answers 200 (every identity's worker connected)."""
    wait_until(proc, lambda: http_get(port, "/readyz", timeout=2.0)[0] == 200, timeout=timeout,
               what="ready workers", log=log, interval=interval)
