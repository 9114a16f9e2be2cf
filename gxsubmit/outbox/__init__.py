"""The outbox: schema migrations, producer enqueue, the store of command rows and its wake-ups.

The store is the only writer of ``outbox_commands`` besides producers' INSERTs. All SQL lives in
``gxsubmit/sql``: ``NNNN_<name>.sql`` are the migrations, ``queries.sql`` holds the named statements.

One module per concern: ``queries`` (loading the named statements), ``migrations``, ``records`` (the
values the store takes and returns), ``codec`` (the claim's row decoding), ``producer`` (``enqueue``),
``connection`` (the store's connection), ``housekeeping`` (the supervisor's and operator's statements),
``store`` (``OutboxStore``, the workers' statements on top of both) and ``listen`` (``OutboxListener``).
Import from the package.
"""

from __future__ import annotations

from gxsubmit.outbox.codec import _claimed as _claimed
from gxsubmit.outbox.codec import _decode_payloads as _decode_payloads
from gxsubmit.outbox.codec import _json_loads as _json_loads
from gxsubmit.outbox.housekeeping import EXACT_COMMITTED_BELOW, PRUNE_BATCH
from gxsubmit.outbox.listen import PROBE_PREFIX, OutboxListener
from gxsubmit.outbox.migrations import SchemaNotMigrated, latest_version, migrate, schema_version
from gxsubmit.outbox.migrations import _migrations as _migrations
from gxsubmit.outbox.producer import enqueue
from gxsubmit.outbox.queries import CHANNEL
from gxsubmit.outbox.queries import _compose as _compose
from gxsubmit.outbox.records import (
    ERROR_CODE_MAX_BYTES,
    ERROR_MAX_BYTES,
    STATUSES,
    ClaimedCommand,
    Committed,
    QueueStats,
    SubmittedTx,
    TxRecord,
    truncate_error,
)
from gxsubmit.outbox.store import MAX_CLAIM, OutboxStore

__all__ = [
    "CHANNEL",
    "ERROR_CODE_MAX_BYTES",
    "ERROR_MAX_BYTES",
    "EXACT_COMMITTED_BELOW",
    "MAX_CLAIM",
    "PROBE_PREFIX",
    "PRUNE_BATCH",
    "STATUSES",
    "ClaimedCommand",
    "Committed",
    "OutboxListener",
    "OutboxStore",
    "QueueStats",
    "SchemaNotMigrated",
    "SubmittedTx",
    "TxRecord",
    "enqueue",
    "latest_version",
    "migrate",
    "schema_version",
    "truncate_error",
]
