"""The store's statements for the supervisor and the operator: statistics, row release, requeue, prune."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime

from gxsubmit.outbox.connection import StoreConnection
from gxsubmit.outbox.records import STATUSES, QueueStats

#: Rows deleted per statement by ``OutboxStore.prune``: short transactions, bounded WAL per commit.
PRUNE_BATCH = 5_000

#: Below this many rows (the planner's estimate) the statistics count COMMITTED rows exactly. A seq scan of
#: 100 000 rows costs the server ~10-20 ms; the supervisor refreshes every 3-15 s.
EXACT_COMMITTED_BELOW = 100_000


class StoreHousekeeping(StoreConnection):
    """What the supervisor and the admin commands do to the table as a whole (the workers' statements
    are :class:`~gxsubmit.outbox.store.OutboxStore`'s)."""

    async def release_owned(self, owners: Sequence[str]) -> int:
        """Hand back every leased row of these worker ids (processes known to have exited).

        Only safe when no live process uses those ids. The attempt stays counted; the nonce is kept.
        """
        if not owners:
            return 0
        rows = await self._rows("release_owned", {"owners": list(owners)})
        return int(rows[0][0])

    async def release_crashed(self, owners: Sequence[str], limit: int) -> tuple[int, list[str]]:
        """:meth:`release_owned` for workers that crashed or were killed as hung: each of their rows'
        claims counts as a crash; a row that reaches ``limit`` is FAILED (WORKER_CRASH) instead of
        handed back, and one a crash short of it is set to run alone (a single crash changes nothing:
        it may be the host's doing). Returns (rows handed back, command type of each row failed)."""
        if not owners:
            return 0, []
        rows = await self._rows("release_crashed", {"owners": list(owners), "limit": int(limit),
                                                    "alone_from": max(1, int(limit) - 1)})
        return int(rows[0][0]), list(rows[0][1])

    async def waiting_for_key(self) -> tuple[int, int]:
        """(rows, keys): PENDING rows held back by an earlier unfinished row of their order key."""
        rows = await self._rows("waiting_for_key", {})
        return int(rows[0][0]), int(rows[0][1])

    async def fail_unroutable(self, routed_types: Sequence[str]) -> int:
        """Dead-letter PENDING rows whose type no catalogue route serves (pass every routed type)."""
        rows = await self._rows("fail_unroutable", {"types": list(routed_types)})
        return int(rows[0][0])

    async def stats(self, *, exact_below: int = EXACT_COMMITTED_BELOW) -> QueueStats:
        """Counts for /status, the gauges and ``gxsubmit status``, in one statement (queries.sql ``stats``).

        Unfinished and FAILED rows are exact. COMMITTED rows are counted only while the planner estimates
        the table below ``exact_below`` rows; above it their total is that estimate minus the other rows
        and no per-type split is known: the supervisor refreshes these every 3-15 s, and counting a
        retained history of millions of rows each time would keep a core of the database busy.
        """
        by_status_type: dict[tuple[str, str], int] = {}
        by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        failed: dict[str, int] = {}
        retrying: dict[str, int] = {}
        oldest: float | None = None
        reltuples = -1
        for status, ctype, code, count, age in await self._rows("stats", {"exact_below": exact_below}):
            n = int(count)
            if status is None:  # the last row: the planner's estimate of the table's size
                reltuples = n
                continue
            by_status_type[(status, ctype)] = by_status_type.get((status, ctype), 0) + n
            by_status[status] = by_status.get(status, 0) + n
            if status == "FAILED":
                failed[code or ""] = failed.get(code or "", 0) + n
            elif code is not None and status != "COMMITTED":
                retrying[code] = retrying.get(code, 0) + n
            if age is not None:
                oldest = max(oldest or 0.0, float(age))
        estimated = not by_status.get("COMMITTED") and reltuples >= exact_below
        if estimated:
            others = sum(n for s, n in by_status.items() if s != "COMMITTED")
            by_status["COMMITTED"] = max(0, reltuples - others)
        return QueueStats(
            by_status=by_status,
            by_status_type=by_status_type,
            oldest_pending_age_s=oldest,
            failed_by_code=failed,
            retrying_by_code=retrying,
            committed_estimated=estimated,
        )

    async def requeue(
        self, *, ids: Sequence[uuid.UUID] = (), error_code: str | None = None, all_failed: bool = False
    ) -> int:
        """Re-drive FAILED rows: PENDING now, attempts 0, error cleared.

        The nonce is kept unless the row's tx id committed INVALID (see queries.sql ``requeue``).
        """
        if not ids and error_code is None and not all_failed:
            return 0
        params = {"ids": list(ids), "error_code": error_code, "all_failed": all_failed}
        rows = await self._rows("requeue", params)
        return int(rows[0][0])

    async def record_creator_expiry(self, fingerprint: str, not_after: datetime) -> int:
        """Record a certificate's expiry on the unfinished rows it signed that have none; return how many.

        For rows recorded before migration 0004 (or by an older release after a rollback): with the
        expiry known, the worker can abandon their old tx id once it can no longer commit
        (docs/design.md#rotated-certificates).
        """
        rows = await self._rows("record_creator_expiry", {"fingerprint": fingerprint, "not_after": not_after})
        return int(rows[0][0])

    async def prune(
        self,
        older_than_s: float,
        *,
        batch: int = PRUNE_BATCH,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, datetime]:
        """Delete COMMITTED rows committed more than ``older_than_s`` ago; return (rows, cutoff).

        FAILED and unfinished rows stay. Each batch is its own short transaction (locks and WAL stay
        small; an interrupted run keeps what it did). The seq where recent rows begin is found first by a
        binary search of index lookups, so neither the search nor the batches read the recent table.
        ``dry_run`` counts instead of deleting. ``progress`` gets the running total after each batch.
        """
        cutoff = (await self._rows("prune_cutoff", {"older_than_s": older_than_s}))[0][0]
        first, last = (await self._rows("prune_seq_range", {}))[0]
        if first is None:
            return 0, cutoff
        lo, hi = int(first), int(last) + 1  # rows below lo were created before the cutoff; from hi on, not
        while lo < hi:
            mid = (lo + hi) // 2
            found = await self._rows("prune_probe", {"seq": mid, "cutoff": cutoff})
            if found and found[0][1]:
                lo = min(int(found[0][0]) + 1, hi)
            else:
                hi = mid
        if dry_run:
            rows = await self._rows("prune_count", {"below_seq": lo, "cutoff": cutoff})
            return int(rows[0][0]), cutoff
        total, after = 0, int(first) - 1
        while True:
            params = {"after_seq": after, "below_seq": lo, "cutoff": cutoff, "batch": batch}
            n, last_seq = (await self._rows("prune_batch", params))[0]
            if not n:
                return total, cutoff
            total, after = total + int(n), int(last_seq)
            if progress is not None:
                progress(total)
