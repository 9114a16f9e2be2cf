"""What one worker is built from: its parts, made before its event loop does anything.

``build_parts`` makes everything that does not need the database up (the gateway client, the signing
identities, the database link and its batched writes, the wake-ups, the row outcomes, the commit
streams, the status board); ``build_pipeline`` makes the pipeline once the link is up, since it needs
the schema's tx id key. The worker (:mod:`gxsubmit.worker`) only runs them, in its start and shutdown
order, so none of its parts is ever missing.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gxsubmit.backoff import compute_delay
from gxsubmit.breaker import CircuitBreaker
from gxsubmit.config import Config
from gxsubmit.dbconn import with_tcp
from gxsubmit.dblink import Batcher, DbLink
from gxsubmit.fabric import GatewayClient, SigningIdentity
from gxsubmit.fabric.commits import CommitWatcher, tls_cert_hash
from gxsubmit.gatewayhealth import GatewayHealth
from gxsubmit.identityring import IdentityRing
from gxsubmit.job import Job, PipelineSettings
from gxsubmit.metrics import WorkerMetrics
from gxsubmit.outbox import Committed, OutboxListener, OutboxStore, SubmittedTx
from gxsubmit.outcomes import Outcomes
from gxsubmit.pipeline import Pipeline
from gxsubmit.statusboard import StatusBoard
from gxsubmit.txid import TxIdDeriver
from gxsubmit.wakeups import Wakeups
from gxsubmit.workerboot import Boot, gateway_client
from gxsubmit.workerstatus import owner_id, status_path

__all__ = ["WorkerDb", "WorkerParts", "build_parts", "build_pipeline", "worker_db"]

_BATCH_LINGER_S = 0.005  # under load, a batched status write waits this long for more rows


@dataclass(frozen=True, eq=False)
class WorkerDb:
    """The worker's database side: the link that claims and finishes rows, and its batched writes on a
    link of their own (``writes``).

    A statement holds its connection for a whole round trip; far from the database (150 ms) one shared
    connection was most of a command's time: the claim of freed slots waited behind a batch of COMMITTED
    marks and the SUBMITTED marks behind claims. With their own connection the batches overlap the
    claims (bench/run.py wan: open-arrival p50 at 150 ms about 2.0 s against 2.7 s).
    """

    link: DbLink
    #: the connection of the two batches below
    writes: DbLink
    #: the write-ahead (mark_submitted_tx), batched
    submitted: Batcher[SubmittedTx]
    #: mark_committed, batched: (row, command_type), the batch counts the commits
    committed: Batcher[tuple[Committed, str]]

    @property
    def ok(self) -> bool:
        return self.link.ok and self.writes.ok

    @property
    def last_error(self) -> str | None:
        return self.link.last_error or self.writes.last_error

    async def open(self, stop: asyncio.Event) -> bool:
        """Connect both links (at once: far from the database a connect is several round trips)."""
        return all(await asyncio.gather(self.link.open(stop), self.writes.open(stop)))

    async def close(self) -> None:
        await self.link.close()
        await self.writes.close()

    @property
    def batchers(self) -> tuple[Batcher[Any], ...]:
        """In the order shutdown drains and stops them."""
        return (self.submitted, self.committed)

    def start_batchers(self) -> None:
        self.committed.start()
        self.submitted.start()


def worker_db(cfg: Config, identity: str, metrics: WorkerMetrics, wake: asyncio.Event) -> WorkerDb:
    """The database link (it survives outages; nothing connects before ``DbLink.open``) and the batched
    writes over it (started once the link is up)."""
    url = with_tcp(cfg.database_conninfo, cfg)

    async def connect() -> OutboxStore:
        return await OutboxStore.connect(url, schema=cfg.schema,
                                         worker_id=owner_id(cfg.worker_id, identity, os.getpid()),
                                         connect_timeout=cfg.connect_timeout)

    def on_reconnect() -> None:
        metrics.db_reconnects.inc()
        wake.set()

    link = DbLink(connect, max_delay=10.0, on_reconnect=on_reconnect, deadline=cfg.db_deadline)
    writes = DbLink(connect, max_delay=10.0, on_reconnect=on_reconnect, deadline=cfg.db_deadline)

    async def flush_committed(items: list[tuple[Committed, str]]) -> set[uuid.UUID]:
        """One fenced ``mark_committed`` for the batch; the committed counters are written right after
        it (before any waiter resumes), so /metrics never lags the rows by a flush period."""
        rows = [c for c, _ in items]
        held = await writes.call(lambda st: st.mark_committed(rows))
        for c, command_type in items:
            if c.id in held:
                metrics.committed(command_type)
        metrics.flush()
        return held

    linger = _BATCH_LINGER_S  # the same for the two: they share the writes connection
    committed: Batcher[tuple[Committed, str]] = Batcher(
        "committed", flush_committed, lambda c: c[0].id, linger_s=linger)
    submitted: Batcher[SubmittedTx] = Batcher(
        "submitted", lambda items: writes.call(lambda st: st.mark_submitted_tx(items)), lambda r: r.id,
        linger_s=linger)
    return WorkerDb(link, writes, submitted, committed)


@dataclass(frozen=True, eq=False)
class WorkerParts:
    """A worker's parts, all there from its start (see the module docstring)."""

    cfg: Config
    identity: str
    boot: Boot
    settings: PipelineSettings
    gateway: GatewayClient
    ring: IdentityRing
    metrics: WorkerMetrics
    health: GatewayHealth
    db: WorkerDb
    wakeups: Wakeups
    outcomes: Outcomes
    #: channel -> its filtered-block stream (empty without commit events)
    watchers: Mapping[str, CommitWatcher]
    status: StatusBoard
    #: the jobs in flight, by row id
    jobs: dict[uuid.UUID, Job]
    #: set by the first signal: stop claiming and drain
    stop: asyncio.Event
    #: set by a second signal: skip the drain's waiting
    hard_stop: asyncio.Event
    #: set at the end of shutdown: the commit streams keep answering the drain's commit waits until then
    closing: asyncio.Event
    #: wakes the claim loop (NOTIFY, a freed slot, a reconnect, a signal)
    wake: asyncio.Event

    @property
    def breaker(self) -> CircuitBreaker:
        return self.health.breaker

    @property
    def channels(self) -> list[str]:
        """The channels this worker's commands go to."""
        return _channels(self.cfg, self.boot, self.identity)


def _channels(cfg: Config, b: Boot, identity: str) -> list[str]:
    return [cfg.channel] if cfg.channel else b.catalog.channels_for(identity)


def _settings(cfg: Config, identity: str) -> PipelineSettings:
    return PipelineSettings(
        identity=identity, max_attempts=cfg.max_attempts,
        resolve_timeout=min(5.0, cfg.commit_timeout), endorsing_orgs=tuple(cfg.endorsing_orgs),
        channel=cfg.channel, chaincode=cfg.chaincode, max_argument_bytes=cfg.max_argument_bytes,
        max_proposal_bytes=cfg.max_proposal_bytes, max_worker_crashes=cfg.max_worker_crashes,
        in_doubt_limit=cfg.in_doubt_limit)


def _commit_watchers(cfg: Config, b: Boot, channels: list[str], gateway: GatewayClient, ring: IdentityRing,
                     on_state: Callable[[bool], None]) -> dict[str, CommitWatcher]:
    """One filtered-block stream per channel this worker's commands go to (started by the worker)."""
    tls_hash = tls_cert_hash(b.client_cert) if b.client_cert else None
    return {ch: CommitWatcher(gateway, lambda: ring.current, ch, tls_cert_hash=tls_hash,
                              on_state=on_state, timeout_s=cfg.commit_timeout)
            for ch in channels}


def build_parts(cfg: Config, identity: str, b: Boot) -> WorkerParts:
    """Every part of the worker but the pipeline. Call it on the running loop: the gRPC channel binds
    to it. Connects nothing: the worker opens the links in its start order."""
    wi = b.wallet_identity
    gateway = gateway_client(cfg, b)
    ring = IdentityRing(SigningIdentity.from_wallet(wi), wi.not_after)
    metrics = WorkerMetrics(identity)
    health = GatewayHealth(CircuitBreaker(
        threshold=cfg.breaker_threshold, cooldown=min(cfg.breaker_cooldown, 2.0),
        max_cooldown=max(cfg.breaker_cooldown, 2.0)), metrics)
    wake = asyncio.Event()
    db = worker_db(cfg, identity, metrics, wake)
    listen_url = with_tcp(cfg.listen_conninfo, cfg)
    wakeups = Wakeups(
        connect=lambda: OutboxListener.connect(listen_url, connect_timeout=cfg.connect_timeout,
                                               schema=cfg.schema, types=b.types),
        send_probe=lambda payload: db.link.once(lambda st: st.notify_probe(payload)),
        wake=wake, poll_interval=cfg.poll_interval, pooled_poll_interval=cfg.pooled_poll_interval)
    settings = _settings(cfg, identity)
    outcomes = Outcomes(
        settings=settings, db=db.link, metrics=metrics,
        backoff=lambda attempt: compute_delay(attempt, cfg.backoff_base, cfg.backoff_cap, jitter=0.5),
        backoff_cap=cfg.backoff_cap, committed=db.committed, on_finishing=wake.set)
    jobs: dict[uuid.UUID, Job] = {}

    def on_commit_stream(up: bool) -> None:
        metrics.commit_stream_up.set(1 if up else 0)
        status.write()  # the status board below: a stream only changes state once the worker runs

    watchers = (_commit_watchers(cfg, b, _channels(cfg, b, identity), gateway, ring, on_commit_stream)
                if cfg.commit_events else {})
    status = StatusBoard(
        status_path(cfg.runtime_dir, identity), identity, gateway_target=cfg.gateway,
        cert_not_after=wi.not_after, jobs=jobs, db=db, gateway=gateway, health=health,
        outcomes=outcomes, watchers=watchers, wakeups=wakeups, metrics=metrics)
    return WorkerParts(
        cfg=cfg, identity=identity, boot=b, settings=settings, gateway=gateway, ring=ring, metrics=metrics,
        health=health, db=db, wakeups=wakeups, outcomes=outcomes, watchers=watchers, status=status,
        jobs=jobs, stop=asyncio.Event(), hard_stop=asyncio.Event(), closing=asyncio.Event(), wake=wake)


def build_pipeline(parts: WorkerParts, deriver: TxIdDeriver) -> Pipeline:
    """The pipeline, once the database link is up (``deriver`` holds the schema's tx id key)."""
    return Pipeline(
        settings=parts.settings, catalog=parts.boot.catalog, db=parts.db.link, gateway=parts.gateway,
        ring=parts.ring, health=parts.health, metrics=parts.metrics, outcomes=parts.outcomes,
        submitted=parts.db.submitted, deriver=deriver, watchers=parts.watchers)
