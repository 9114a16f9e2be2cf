"""Every Prometheus metric gxsubmit exposes, in one place (names and labels: docs/design.md#metrics).

The service runs prometheus-client in multiprocess mode: the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` (and wipes it) *before* any process imports this module, each
worker writes its own mmap files, and the supervisor serves the aggregate with
:func:`render_latest` and calls :func:`mark_process_dead` for every child that exits.
prometheus-client decides single- or multi-process mode when it is first imported, so the
supervisor must set the variable before importing anything that imports this module.

Label values are bounded: ``identity`` (a handful), ``command_type`` (the catalogue),
``error_code`` (our short codes and TxValidationCode names), ``stage``/``reason`` (fixed sets).
Never put ids, tx ids or messages in a label.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

__all__ = [
    "BREAKER_OPEN",
    "CERT_EXPIRY",
    "COMMANDS_CLAIMED",
    "COMMANDS_COMMITTED",
    "COMMANDS_FAILED",
    "COMMAND_LATENCY",
    "COMMAND_RETRIES",
    "DB_RECONNECTS",
    "GATEWAY_RECONNECTS",
    "IN_FLIGHT",
    "OLDEST_PENDING_AGE",
    "OUTBOX_ROWS",
    "STAGE_DURATION",
    "WALLET_RELOADS",
    "WORKER_RESTARTS",
    "WORKER_UP",
    "WorkerMetrics",
    "exposed_metric_names",
    "mark_process_dead",
    "render_latest",
]

# _created samples add a series per child and are not aggregated in multiprocess mode anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Fabric latencies: milliseconds (endorse on a quiet peer) to a minute (commit-status deadline).
_FABRIC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)

# --- written by workers -------------------------------------------------------------------
COMMANDS_CLAIMED = Counter(
    "gxsubmit_commands_claimed", "Commands claimed from the outbox", ["identity", "command_type"]
)
COMMANDS_COMMITTED = Counter(
    "gxsubmit_commands_committed", "Commands committed VALID on the ledger", ["identity", "command_type"]
)
COMMANDS_FAILED = Counter(
    "gxsubmit_commands_failed",
    "Commands moved to FAILED (dead letter)",
    ["identity", "command_type", "error_code"],
)
COMMAND_RETRIES = Counter(
    "gxsubmit_command_retries",
    "Commands sent back to PENDING for a later try",
    ["identity", "reason"],
)
STAGE_DURATION = Histogram(
    "gxsubmit_stage_duration_seconds",
    "Duration of one Fabric stage of a command (endorse, submit, commit)",
    ["identity", "stage"],
    buckets=_FABRIC_BUCKETS,
)
COMMAND_LATENCY = Histogram(
    "gxsubmit_command_latency_seconds",
    "Time from outbox insert (created_at) to VALID commit",
    ["identity"],
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "gxsubmit_in_flight", "Commands held by a worker right now", ["identity"], multiprocess_mode="livesum"
)
BREAKER_OPEN = Gauge(
    "gxsubmit_breaker_open",
    "1 while the identity's gateway circuit breaker is open (claiming paused)",
    ["identity"],
    multiprocess_mode="livemax",
)
DB_RECONNECTS = Counter("gxsubmit_db_reconnects", "Database reconnections by a worker", ["identity"])
GATEWAY_RECONNECTS = Counter(
    "gxsubmit_gateway_reconnects", "Gateway channel re-established after an outage", ["identity"]
)
COMMIT_STREAM_UP = Gauge(
    "gxsubmit_commit_stream_up",
    "1 while the worker learns commits from the peer's filtered-block stream (0: CommitStatus per tx)",
    ["identity"],
    multiprocess_mode="livemax",
)
WALLET_RELOADS = Counter(
    "gxsubmit_wallet_reloads", "Rotated wallet files picked up without restart", ["identity", "result"]
)
CERT_EXPIRY = Gauge(
    "gxsubmit_identity_cert_expiry_timestamp_seconds",
    "notAfter of the identity's certificate (Unix time)",
    ["identity"],
    multiprocess_mode="mostrecent",
)

# --- written by the supervisor --------------------------------------------------------------
WORKER_UP = Gauge(
    "gxsubmit_worker_up", "1 if the identity's worker is running and ready", ["identity"],
    multiprocess_mode="mostrecent",
)
WORKER_RESTARTS = Counter("gxsubmit_worker_restarts", "Worker restarts by the supervisor", ["identity"])
OUTBOX_ROWS = Gauge(
    "gxsubmit_outbox_rows", "Outbox rows by status", ["status"], multiprocess_mode="mostrecent"
)
OLDEST_PENDING_AGE = Gauge(
    "gxsubmit_oldest_pending_age_seconds",
    "Age of the oldest PENDING row (0 when none)",
    multiprocess_mode="mostrecent",
)

_ALL: tuple[Counter | Gauge | Histogram, ...] = (
    COMMANDS_CLAIMED,
    COMMANDS_COMMITTED,
    COMMANDS_FAILED,
    COMMAND_RETRIES,
    STAGE_DURATION,
    COMMAND_LATENCY,
    IN_FLIGHT,
    BREAKER_OPEN,
    DB_RECONNECTS,
    GATEWAY_RECONNECTS,
    COMMIT_STREAM_UP,
    WALLET_RELOADS,
    CERT_EXPIRY,
    WORKER_UP,
    WORKER_RESTARTS,
    OUTBOX_ROWS,
    OLDEST_PENDING_AGE,
)


def exposed_metric_names() -> set[str]:
    """Every sample name the service can expose (for alert rules and dashboards checks)."""
    names: set[str] = set()
    for m in _ALL:
        base = m._name
        if isinstance(m, Counter):
            names.add(base + "_total")
        elif isinstance(m, Histogram):
            names.update({base + "_bucket", base + "_sum", base + "_count"})
        else:
            names.add(base)
    return names


def render_latest(path: str | None = None) -> bytes:
    """The aggregate of every process's metrics, in the text exposition format.

    ``path`` defaults to ``PROMETHEUS_MULTIPROC_DIR`` (read by prometheus-client); outside
    multiprocess mode this falls back to this process's own registry.
    """
    registry = CollectorRegistry()
    try:
        _mp.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    except ValueError:  # no multiprocess directory configured
        return bytes(generate_latest(REGISTRY))
    return bytes(generate_latest(registry))


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Drop a dead process's live gauges (in-flight, breaker) from the aggregate."""
    _mp.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


class _BufferedHistogram:
    """Observations kept in plain Python and written to the (mmap-backed) child on :meth:`flush`.

    A multiprocess histogram observation is two locked mmap writes; at hundreds of commands per
    second that was a measurable share of a worker's CPU. Falls back to direct writes if the
    prometheus-client internals it relies on are missing.
    """

    __slots__ = ("_bounds", "_buckets", "_child", "_counts", "_direct", "_dirty", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        buckets = getattr(child, "_buckets", None)
        bounds = getattr(child, "_upper_bounds", None)
        total = getattr(child, "_sum", None)
        self._direct = buckets is None or bounds is None or total is None or len(buckets) != len(bounds)
        self._bounds: list[float] = list(bounds) if bounds is not None else []
        self._buckets: list[Any] = list(buckets) if buckets is not None else []
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._dirty = False

    def observe(self, amount: float) -> None:
        if self._direct:
            self._child.observe(amount)
            return
        # Same rule as Histogram.observe: the first bucket whose upper bound is >= amount.
        i = bisect_left(self._bounds, amount)
        if i < len(self._counts):
            self._counts[i] += 1
        self._sum += amount
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        self._dirty = False
        self._child._sum.inc(total)
        for value, n in zip(self._buckets, counts, strict=True):
            if n:
                value.inc(n)


class WorkerMetrics:
    """Label children bound to one identity, cached: ``.labels()`` is too slow per command.

    Per-command counters and observations (claimed, committed, stage and latency histograms) are
    accumulated in plain Python and written to prometheus-client by :meth:`flush` — the worker calls
    it after every committed batch, on a short timer and at shutdown. Rare events (failures,
    retries, reloads, gauges) are written at once.
    """

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self._claimed: dict[str, Counter] = {}
        self._committed: dict[str, Counter] = {}
        self._failed: dict[tuple[str, str], Counter] = {}
        self._retries: dict[str, Counter] = {}
        self._pending_claimed: dict[str, int] = {}
        self._pending_committed: dict[str, int] = {}
        self.endorse = _BufferedHistogram(STAGE_DURATION.labels(identity=identity, stage="endorse"))
        self.submit = _BufferedHistogram(STAGE_DURATION.labels(identity=identity, stage="submit"))
        self.commit = _BufferedHistogram(STAGE_DURATION.labels(identity=identity, stage="commit"))
        self.latency = _BufferedHistogram(COMMAND_LATENCY.labels(identity=identity))
        self._hists = (self.endorse, self.submit, self.commit, self.latency)
        self.in_flight = IN_FLIGHT.labels(identity=identity)
        self.breaker_open = BREAKER_OPEN.labels(identity=identity)
        self.db_reconnects = DB_RECONNECTS.labels(identity=identity)
        self.gateway_reconnects = GATEWAY_RECONNECTS.labels(identity=identity)
        self.cert_expiry = CERT_EXPIRY.labels(identity=identity)
        self.commit_stream_up = COMMIT_STREAM_UP.labels(identity=identity)
        self.commit_stream_up.set(0)
        self.in_flight.set(0)
        self.breaker_open.set(0)

    def claimed(self, command_type: str, n: int = 1) -> None:
        p = self._pending_claimed
        p[command_type] = p.get(command_type, 0) + n

    def committed(self, command_type: str) -> None:
        p = self._pending_committed
        p[command_type] = p.get(command_type, 0) + 1

    def flush(self) -> None:
        """Write everything accumulated since the last flush to the prometheus-client values."""
        if self._pending_claimed:
            pending, self._pending_claimed = self._pending_claimed, {}
            for command_type, n in pending.items():
                c = self._claimed.get(command_type)
                if c is None:
                    c = self._claimed[command_type] = COMMANDS_CLAIMED.labels(self.identity, command_type)
                c.inc(n)
        if self._pending_committed:
            pending, self._pending_committed = self._pending_committed, {}
            for command_type, n in pending.items():
                c = self._committed.get(command_type)
                if c is None:
                    c = self._committed[command_type] = COMMANDS_COMMITTED.labels(self.identity, command_type)
                c.inc(n)
        for h in self._hists:
            h.flush()

    def failed(self, command_type: str, error_code: str) -> None:
        key = (command_type, error_code)
        c = self._failed.get(key)
        if c is None:
            c = self._failed[key] = COMMANDS_FAILED.labels(self.identity, command_type, error_code)
        c.inc()

    def retried(self, reason: str) -> None:
        c = self._retries.get(reason)
        if c is None:
            c = self._retries[reason] = COMMAND_RETRIES.labels(self.identity, reason)
        c.inc()

    def wallet_reload(self, result: str) -> None:
        WALLET_RELOADS.labels(self.identity, result).inc()
