"""The supervisor's database watcher, its decisions without a database: when statistics are due and how
long to wait (a fake clock), which statistics call for the unroutable sweep, busy versus idle, and one
log line per outage. The thread against a real PostgreSQL is tests/integration/test_outbox_watcher.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gxsubmit.config import Config
from gxsubmit.outbox import QueueStats
from gxsubmit.supervisor.watcher import (
    DB_RETRY_CAP,
    DB_RETRY_FIRST,
    STATS_INTERVAL,
    STATS_INTERVAL_BUSY,
    OutboxWatcher,
    _has_unroutable,
    _Schedule,
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stats(**by_status: int) -> QueueStats:
    return QueueStats(by_status={"PENDING": 0, "CLAIMED": 0, "SUBMITTED": 0, "COMMITTED": 0, "FAILED": 0,
                                 **by_status})


@pytest.fixture
def watcher() -> Iterator[OutboxWatcher]:
    """A watcher whose thread never starts (its event loop is closed afterwards)."""
    w = OutboxWatcher(Config(), lambda: ["MINT"])
    try:
        yield w
    finally:
        w._loop.close()


def test_statistics_are_due_at_start_then_at_the_interval_the_refresh_chose() -> None:
    clock = FakeClock()
    s = _Schedule(clock)
    assert s.stats_due()
    s.refreshed(STATS_INTERVAL)
    clock.now += STATS_INTERVAL - 0.5
    assert not s.stats_due()  # a pass now is for the heartbeat only
    assert s.sleep(None) == pytest.approx(0.5)
    clock.now += 0.5
    assert s.stats_due() and s.sleep(None) == 0.0


def test_the_heartbeat_shortens_the_wait_never_lengthens_it() -> None:
    clock = FakeClock()
    s = _Schedule(clock)
    s.refreshed(STATS_INTERVAL_BUSY)
    assert s.sleep(lambda: 1.0) == 1.0
    assert s.sleep(lambda: 60.0) == STATS_INTERVAL_BUSY


def test_failures_back_off_doubling_to_the_cap_and_a_refresh_starts_over() -> None:
    clock = FakeClock()
    s = _Schedule(clock)
    waits = []
    for _ in range(8):
        s.failed()
        waits.append(s.sleep(lambda: 0.0))  # a due heartbeat does not shorten the retry wait
        assert s.stats_due()  # the first pass after a failure reads the statistics
    assert waits[:3] == [DB_RETRY_FIRST, 2 * DB_RETRY_FIRST, 4 * DB_RETRY_FIRST]
    assert waits == sorted(waits) and waits[-1] == DB_RETRY_CAP
    s.refreshed(STATS_INTERVAL)
    s.failed()
    assert s.sleep(None) == DB_RETRY_FIRST


def test_only_pending_rows_of_an_unrouted_type_call_for_the_sweep() -> None:
    def counts(*items: tuple[str, str, int]) -> QueueStats:
        return QueueStats(by_status_type={(status, ctype): n for status, ctype, n in items})

    assert _has_unroutable(counts(("PENDING", "OLD", 1)), ["MINT"])
    assert not _has_unroutable(counts(("PENDING", "MINT", 3)), ["MINT"])
    assert not _has_unroutable(counts(("PENDING", "OLD", 0)), ["MINT"])  # listed, but no row
    assert not _has_unroutable(counts(("CLAIMED", "OLD", 1), ("FAILED", "OLD", 2)), ["MINT"])  # not PENDING
    assert _has_unroutable(counts(("PENDING", "MINT", 1)), [])


def test_moving_rows_refresh_often_and_an_idle_queue_seldom(watcher: OutboxWatcher) -> None:
    assert watcher._took(stats(), 0) == STATS_INTERVAL  # first look, nothing unfinished
    assert watcher._took(stats(PENDING=2), 0) == STATS_INTERVAL_BUSY
    assert watcher._took(stats(COMMITTED=2), 0) == STATS_INTERVAL_BUSY  # changed since the last look
    assert watcher._took(stats(COMMITTED=2), 0) == STATS_INTERVAL  # idle and unchanged
    assert watcher._took(stats(SUBMITTED=1, COMMITTED=2), 0) == STATS_INTERVAL_BUSY


def test_a_refresh_records_the_statistics_and_the_rows_it_failed(
    watcher: OutboxWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gxsubmit.supervisor")
    assert (watcher.ok, watcher.stats, watcher.stats_at) == (None, None, None)
    current = stats(FAILED=3)
    watcher._took(current, 2)
    watcher._took(current, 1)
    assert watcher.stats is current and watcher.stats_at is not None
    assert (watcher.ok, watcher.error, watcher.unroutable_failed) == (True, None, 3)
    assert [r.getMessage() for r in caplog.records] == ["Failed unroutable commands"] * 2


def test_an_outage_is_logged_once_and_its_end_once(
    watcher: OutboxWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gxsubmit.supervisor")
    watcher._failed(ConnectionRefusedError("refused"))
    watcher._failed(TimeoutError("no answer from the database within 5 s"))
    assert (watcher.ok, watcher.error) == (False, "TimeoutError: no answer from the database within 5 s")
    watcher._took(stats(), 0)
    watcher._took(stats(), 0)
    watcher._failed(OSError("down"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "Outbox database unavailable, retrying with backoff"),
        ("INFO", "Outbox database reachable again"),
        ("ERROR", "Outbox database unavailable, retrying with backoff"),
    ]
