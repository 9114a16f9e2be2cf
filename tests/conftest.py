"""Database fixtures shared by every test that needs PostgreSQL.

``pg_url`` is the server (``GXSUBMIT_TEST_DATABASE_URL`` or an embedded one started for the session).
``schema`` is a fresh, migrated, randomly named schema per test, dropped afterwards, so tests running
at the same time (several people share the machine server) never see each other's rows. ``conn`` and
``store`` are an autocommit connection and a worker's store on it; ``lschema`` holds the services' own
Prisma outbox table instead (the legacy adoption's tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import legacy_prisma
import psycopg
import pytest
from dbutil import drop_schema, migrate_schema, new_schema_name, url_with_search_path
from psycopg import sql

from gxsubmit.outbox import OutboxStore
from gxsubmit.pgembed import EmbeddedPostgres

T = TypeVar("T")

TEST_URL_ENV = "GXSUBMIT_TEST_DATABASE_URL"
_OWN_BASETEMP = pytest.StashKey[Path]()

#: Suites of real processes (a supervisor with its workers and a gateway, an image build): minutes.
SLOW_SUITES = frozenset({"acceptance", "deploy"})
#: Tests that share one thing of the machine's run in one pytest-xdist worker (scripts/test.sh runs the
#: suite on several): the deploy suite builds the image once per worker and shares podman's storage; the
#: pooler tests count the pooled statements (application_name 'gxsubmit') of the whole server.
#: (Single tests carry their group as a mark where they are, e.g. test_outbox_store.py's NOTIFY checks.)
XDIST_GROUPS = {"deploy": "image", "test_behind_pgbouncer.py": "pooler", "test_pooler.py": "pooler"}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """As root, the session's temporary directories go under a directory of its own, not pytest's
    per-user one (pytest-of-root in the temp directory): every pytest session started beside this one
    (another checkout, another CI job) makes that one private again (0700), and an embedded PostgreSQL
    under it runs as another user and loses its data directory
    (tests/integration/test_parallel_sessions.py). ``--basetemp`` wins."""
    if os.geteuid() != 0 or config.option.basetemp:
        return
    config.option.basetemp = tempfile.mkdtemp(prefix="gxsubmit-tests-")
    config.stash[_OWN_BASETEMP] = Path(config.option.basetemp)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's own directory goes when everything passed; after a failure it stays to be read."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own is not None and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of the slow suites is ``slow``, so ``-m "not slow"`` is the quick local subset; the
    tests of :data:`XDIST_GROUPS` get their group."""
    here = Path(__file__).parent
    for item in items:
        try:
            suite = item.path.relative_to(here).parts[0]
        except ValueError:  # a test outside tests/ (pytest run on another path)
            continue
        if suite in SLOW_SUITES:
            item.add_marker(pytest.mark.slow)
        group = XDIST_GROUPS.get(suite) or XDIST_GROUPS.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env_url = os.environ.get(TEST_URL_ENV)
    if env_url:
        yield env_url
        return
    pg = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pgsession")) / "data", fsync=False)
    pg.start()
    try:
        yield pg.url
    finally:
        pg.stop()


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A migrated schema of its own for this test (usable from sync and async tests)."""
    name = new_schema_name()
    migrate_schema(pg_url, name)
    try:
        yield name
    finally:
        drop_schema(pg_url, name)


@pytest.fixture
def db_url_with_schema(pg_url: str, schema: str) -> str:
    return url_with_search_path(pg_url, schema)


@pytest.fixture
async def conn(pg_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection to the server (statements name their schema)."""
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as c:
        yield c


@pytest.fixture
async def store(pg_url: str, schema: str) -> AsyncIterator[OutboxStore]:
    """The store of worker ``w1`` on this test's schema."""
    s = await OutboxStore.connect(pg_url, schema=schema, worker_id="w1")
    yield s
    await s.close()


@pytest.fixture
def lschema(pg_url: str) -> Iterator[str]:
    """A schema of its own holding the services' tables, as Prisma's migrations create them."""
    name = new_schema_name()
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        legacy_prisma.create(c, name)
    try:
        yield name
    finally:
        drop_schema(pg_url, name)


@pytest.fixture(scope="session")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One development wallet for the session; tests that change a wallet copy it first."""
    from gxsubmit.devwallet import make_dev_wallet

    path = tmp_path_factory.mktemp("devwallet") / "wallet"
    make_dev_wallet(path)
    return path
