"""How gxsubmit reaches PostgreSQL: through a connection pooler or not, and over verified TLS.

Why a module: production databases sit behind PgBouncer (often in transaction mode) and require TLS.
A transaction pooler hands every transaction to whichever server connection is free, so nothing that
lives in a server session may be relied on across transactions (named prepared statements, SET,
LISTEN). Every connection gxsubmit opens therefore disables psycopg's automatic prepared statements
(:data:`CONNECT_ARGS`); session settings are applied only where they stick (:func:`behind_proxy`), and
a LISTEN connection proves that notifications arrive before the worker relies on them.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

if TYPE_CHECKING:
    from gxsubmit.config import Config

__all__ = [
    "CONNECT_ARGS", "PoolInfo", "behind_proxy", "ca_setting", "pool_mode", "tls_preflight", "tls_problem",
]

#: Keyword arguments for every ``psycopg.(Async)Connection.connect`` of gxsubmit: never prepare a
#: statement server-side (psycopg does after 5 runs): a transaction pooler would run the next execute
#: on another server connection ("prepared statement _pg3_0 does not exist / already exists"). Unnamed
#: statements are planned for their actual parameters each time, which the claim wants anyway.
CONNECT_ARGS: dict[str, Any] = {"prepare_threshold": None}


def _local_endpoint(conn: psycopg.AsyncConnection[Any]) -> tuple[str | None, int | None]:
    """(address, port) of our end of the connection; (None, None) over a unix socket."""
    with contextlib.closing(socket.socket(fileno=_dup(conn.pgconn.socket))) as sock:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None, None
        addr = sock.getsockname()
        return str(addr[0]), int(addr[1])


def _dup(fd: int) -> int:
    return os.dup(fd)


@cache
def _sql(name: str) -> bytes:
    text = resources.files("gxsubmit").joinpath("sql", "route.sql").read_text(encoding="utf-8")
    parts = re.split(r"^--\s*name:\s*(\w+)\s*$", text, flags=re.MULTILINE)
    bodies: dict[str, str] = dict(zip(parts[1::2], (b.strip() for b in parts[2::2]), strict=True))
    return bodies[name].encode()


async def behind_proxy(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True when the server does not see this connection's own socket: a pooler (or a TCP proxy) sits
    between. PostgreSQL reports the client address and port it sees; directly connected, that is our
    socket's local address; through PgBouncer it is the pooler's own connection to the server."""
    cur = await conn.execute(_sql("client_endpoint"))
    row = await cur.fetchone()
    seen_addr, seen_port = (row or (None, None))
    addr, port = _local_endpoint(conn)
    if port is None:  # we use a unix socket: so does the server see one unless something relays
        return seen_port is not None
    if seen_port is None:
        return True
    host = str(seen_addr).split("/", 1)[0]
    return int(seen_port) != port or host.removeprefix("::ffff:") != str(addr).removeprefix("::ffff:")


class PoolInfo:
    """What ``gxsubmit check`` can tell of a pooler's mode by watching server back-end pids."""

    def __init__(self, mode: str, detail: str) -> None:
        self.mode, self.detail = mode, detail


async def pool_mode(url: str, *, connect_timeout: float) -> PoolInfo:
    """Guess the pool mode from which server back-end answers two client connections.

    Session pooling gives each client connection one server connection for its whole life: a client's
    back-end never changes, and a second client never gets the first one's while it is connected.
    Transaction pooling hands a free server connection to each transaction (PgBouncer reuses the most
    recently freed one first), so the second client usually gets the first one's back-end. Statement
    pooling refuses transactions of several statements.
    """
    args: dict[str, Any] = {"connect_timeout": max(2, round(connect_timeout)), **CONNECT_ARGS}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, **args) as a, \
            await psycopg.AsyncConnection.connect(url, autocommit=True, **args) as b:
        pids = []
        for conn in (a, b, a, b, a):
            cur = await conn.execute(_sql("backend_pid"))
            row = await cur.fetchone()
            pids.append(int(row[0]) if row else 0)
        try:
            async with a.transaction():
                await a.execute(_sql("first_of_two"))
                await a.execute(_sql("second_of_two"))
        except psycopg.Error as exc:
            return PoolInfo("statement", f"a transaction of two statements failed: {str(exc).strip()}")
    a_pids, b_pids = set(pids[0::2]), set(pids[1::2])
    if len(a_pids) > 1 or len(b_pids) > 1 or a_pids & b_pids:
        return PoolInfo("transaction", "server connections change between a client's transactions")
    return PoolInfo("session", "each client connection kept its own server connection")


def tls_problem(exc: BaseException, *, url_setting: str, ca_setting: str) -> str | None:
    """A one-line explanation naming the setting when a connect failed on TLS verification, else None.

    Such a failure does not heal by retrying (the CA or host name is wrong), so start-up stops on it.
    """
    text = " ".join(str(exc).split())
    low = text.lower()
    if "does not match host name" in low:
        return (f"database TLS: the server certificate does not match the host name in {url_setting} "
                f"(sslmode=verify-full checks it): {text}")
    if "certificate verify failed" in low or "self-signed certificate" in low:
        return f"database TLS: the server certificate is not signed by the CA of {ca_setting}: {text}"
    if "root certificate file" in low or "could not read root certificate" in low:
        return f"database TLS: cannot read the CA file of {ca_setting}: {text}"
    return None


def ca_setting(cfg: Config, url_setting: str = "GXSUBMIT_DATABASE_URL") -> str:
    """Where the CA of the database connection comes from, for error messages."""
    if cfg.database_ca is not None:
        return f"GXSUBMIT_DATABASE_CA ({cfg.database_ca})"
    return f"sslrootcert of {url_setting} (or libpq's default ~/.postgresql/root.crt)"


def tls_preflight(cfg: Config) -> str | None:
    """At start-up: a TLS verification failure of the database (or LISTEN) URL as one line, else None.

    Only when a CA file or ``sslmode=verify-*`` is configured; any other failure (the database down)
    is left to the usual reconnect loops, as without TLS.
    """
    targets = [("GXSUBMIT_DATABASE_URL", cfg.database_conninfo)]
    if cfg.listen_url:
        targets.append(("GXSUBMIT_LISTEN_URL", cfg.listen_conninfo))
    for setting, url in targets:
        if cfg.database_ca is None and "verify-" not in str(conninfo_to_dict(url).get("sslmode", "")):
            continue
        try:
            with psycopg.connect(url, connect_timeout=max(2, round(cfg.connect_timeout)), **CONNECT_ARGS):
                pass
        except psycopg.OperationalError as exc:
            problem = tls_problem(exc, url_setting=setting, ca_setting=ca_setting(cfg, setting))
            if problem is not None:
                return problem
    return None
