"""A PgBouncer (transaction mode) in front of the test PostgreSQL, for tests that need a real pooler.

Locally a missing ``pgbouncer`` skips with a reason; under CI=true it fails (scripts/test.sh installs it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.conninfo import conninfo_to_dict
from tooling import missing_tool

from gxsubmit.pgbouncer import PgBouncer, find_pgbouncer


def pooled_url(bouncer: PgBouncer, server_url: str) -> str:
    """``server_url``'s database and user, reached through ``bouncer``."""
    info = conninfo_to_dict(server_url)
    return bouncer.url(str(info.get("dbname") or "postgres"), str(info.get("user") or "postgres"))


@contextmanager
def pgbouncer_for(server_url: str, pool_mode: str = "transaction") -> Iterator[PgBouncer]:
    if find_pgbouncer() is None:
        missing_tool("pgbouncer is not installed (Debian: apt-get install pgbouncer; scripts/test.sh does "
                     "it as root)")
    info = conninfo_to_dict(server_url)
    user = str(info.get("user") or "postgres")
    bouncer = PgBouncer(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432),
                        pool_mode=pool_mode, users=(user,))
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.cleanup()
