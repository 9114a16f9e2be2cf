"""How an operator command runs: its database connection, and every failure an operator can act on as
one line on stderr and an exit code, never a traceback.

Why a module of its own: ``migrate``, ``status`` (admin), ``fleet``, ``verify`` and ``cancel`` share it;
kept in :mod:`gxsubmit.admin` it made ``fleet`` and ``admin`` import each other.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from gxsubmit.config import Config
from gxsubmit.dbroute import CONNECT_ARGS, ca_setting, tls_problem
from gxsubmit.exitcodes import RET_CONFIG, RET_FAIL, RET_UNAVAILABLE
from gxsubmit.outbox import OutboxStore, SchemaNotMigrated

__all__ = ["CommandFailed", "connect", "first_line", "not_migrated", "open_store", "run_command", "uuid_arg"]


class CommandFailed(Exception):
    """An expected failure of a command: its message is the line printed, ``code`` the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def uuid_arg(text: str) -> uuid.UUID:
    """The argparse type of a row id: a usage error naming the text, not a traceback."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (a database error's detail lines are noise on stderr)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def not_migrated(cfg: Config) -> CommandFailed:
    return CommandFailed(RET_FAIL, f"schema {cfg.schema!r} has no outbox table; run 'gxsubmit migrate' first")


def _require_url(cfg: Config) -> None:
    if not cfg.database_url:
        raise CommandFailed(RET_CONFIG, "no database URL: set GXSUBMIT_DATABASE_URL or --database-url")


async def connect(cfg: Config) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection to the configured database (its CA file applied, no prepared statements)."""
    _require_url(cfg)
    return await psycopg.AsyncConnection.connect(
        cfg.database_conninfo,
        autocommit=True,
        connect_timeout=max(2, round(cfg.connect_timeout)),
        application_name="gxsubmit:admin",
        **CONNECT_ARGS,
    )


async def open_store(cfg: Config) -> OutboxStore:
    """The outbox store of the configured schema (raises SchemaNotMigrated if it has no table)."""
    _require_url(cfg)
    return await OutboxStore.connect(
        cfg.database_conninfo, schema=cfg.schema, worker_id="admin", connect_timeout=cfg.connect_timeout
    )


def run_command(command: str, cfg: Config, body: Callable[[], Awaitable[int]], *,
                bounded: bool = True) -> int:
    """Run ``body`` and turn the expected failures into one line on stderr.

    ``bounded``: the whole command must finish within max(30 s, 4 x connect timeout); a command made of
    many short statements (prune) is not bounded as a whole, each statement has the session's timeout.
    """
    prefix = f"gxsubmit {command}:"
    timeout = max(30.0, 4 * cfg.connect_timeout) if bounded else None
    try:
        return asyncio.run(asyncio.wait_for(body(), timeout=timeout))
    except CommandFailed as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return exc.code
    except (SchemaNotMigrated, psycopg.errors.UndefinedTable):
        print(f"{prefix} {not_migrated(cfg)}", file=sys.stderr)
        return RET_FAIL
    except TimeoutError:
        print(f"{prefix} database unavailable: no answer in time", file=sys.stderr)
        return RET_UNAVAILABLE
    except psycopg.OperationalError as exc:
        problem = tls_problem(exc, url_setting="GXSUBMIT_DATABASE_URL", ca_setting=ca_setting(cfg))
        if problem is not None:
            print(f"{prefix} {problem}", file=sys.stderr)
            return RET_CONFIG
        print(f"{prefix} database unavailable: {first_line(exc)}", file=sys.stderr)
        return RET_UNAVAILABLE
    except psycopg.Error as exc:
        print(f"{prefix} database error: {first_line(exc)}", file=sys.stderr)
        return RET_FAIL
