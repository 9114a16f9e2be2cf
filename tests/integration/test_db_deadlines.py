"""The worker's database link under a blackhole it cannot see at the TCP level (the fault proxy keeps
acknowledging): the client-side deadline fails the statement, marks the link down, and the link
reconnects once the route heals."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gxsubmit.config import Config
from gxsubmit.dbconn import link_conninfo, tcp_params
from gxsubmit.dblink import DbLink, DbUnavailable
from gxsubmit.outbox import OutboxStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.faultproxy import FaultProxy


def test_tcp_settings_are_added_unless_the_url_sets_them() -> None:
    cfg = Config(database_url="postgresql://u@db:5432/x?keepalives_idle=42", db_keepalive=6.0,
                 db_tcp_user_timeout=12.5)
    info = psycopg.conninfo.conninfo_to_dict(link_conninfo(cfg))
    assert info["keepalives_idle"] == "42"  # the operator's own value wins
    assert info["keepalives"] == "1" and info["keepalives_interval"] == "2"
    assert info["keepalives_count"] == "3"
    assert info["tcp_user_timeout"] == "12500"
    assert info["host"] == "db" and info["dbname"] == "x"
    assert "tcp_user_timeout" not in tcp_params(Config(db_tcp_user_timeout=0.0))


@contextlib.contextmanager
def _proxied(pg_url: str) -> Iterator[tuple[FaultProxy, str]]:
    """A fault proxy in front of the test database, and the URL through it."""
    info = psycopg.conninfo.conninfo_to_dict(pg_url)
    with FaultProxy(f"{info.get('host') or '127.0.0.1'}:{info.get('port') or 5432}", name="db") as proxy:
        info.update(host="127.0.0.1", port=str(proxy.port))
        yield proxy, psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


def _link(url: str, schema: str, connect_timeout: float) -> DbLink:
    """A link with a 1 s statement deadline, as a worker's (quick reconnects for the test)."""
    return DbLink(lambda: OutboxStore.connect(url, schema=schema, worker_id="t",
                                              connect_timeout=connect_timeout),
                  base_delay=0.05, max_delay=0.5, deadline=1.0)


def test_a_blackholed_link_fails_within_the_deadline_and_heals(pg_url: str, schema: str) -> None:
    with _proxied(pg_url) as (proxy, url):

        async def main() -> None:
            link = _link(url, schema, 2)
            assert await link.open(asyncio.Event())
            await link.once(lambda st: st.ping())
            proxy.blackhole()
            with pytest.raises(DbUnavailable, match="no answer from the database within 1 s"):
                await link.once(lambda st: st.ping())
            assert not link.ok
            with pytest.raises(DbUnavailable):  # no waiting on a link known to be down
                await link.once(lambda st: st.ping())
            proxy.blackhole(False)
            assert await link.wait_ready(60)
            await link.call(lambda st: st.ping(), timeout=60)
            assert link.reconnects == 1
            await link.close()

        asyncio.run(main())


def test_a_queue_of_statements_on_a_slow_link_is_not_a_dead_link(pg_url: str, schema: str) -> None:
    """The deadline counts from a statement's own turn on the connection: 30 statements at a 100 ms
    round trip take 3 s together, three times the deadline, and every one of them answers."""
    with _proxied(pg_url) as (proxy, url):

        async def main() -> None:
            link = _link(url, schema, 5)
            assert await link.open(asyncio.Event())
            proxy.delay(100.0)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.gather(*(link.once(lambda st: st.ping()) for _ in range(30)))
            assert loop.time() - t0 > 1.0  # the queue really outlasted the deadline
            assert link.ok and link.reconnects == 0
            await link.close()

        asyncio.run(main())
