"""The fleet registry: every supervisor records itself in ``gxsubmit_replicas`` (migration 0011).

Replicas coordinate only through PostgreSQL, so the database is the one place that can tell the
whole fleet's state under Kubernetes and systemd alike. A supervisor's :class:`FleetReporter`
rewrites its row once per ``fleet_interval`` (one statement, which also forgets rows long silent),
marks it stopped on a graceful exit, and runs the fleet-aware unroutable sweep: a type is dead-lettered
only when no replica has routed it for ``unroutable_grace``, so the replica that lacks a type during a
rolling update (or after a rollback) never fails rows another replica's catalogue knows.

The reporter lives on the supervisor's database thread (``OutboxWatcher``) and uses its connection;
the main loop only hands it snapshots (:meth:`FleetReporter.observe`). ``gxsubmit fleet`` reads the rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.types.json import Jsonb

from gxsubmit import __version__
from gxsubmit.log import get_logger

if TYPE_CHECKING:
    import psycopg

    from gxsubmit.catalog import Catalog
    from gxsubmit.config import Config

__all__ = [
    "FleetReporter",
    "Replica",
    "add_arguments",
    "catalog_digest",
    "format_fleet",
    "read_fleet",
    "run",
    "summary_line",
]

log = get_logger("gxsubmit.fleet")

#: A replica silent for this many fleet intervals is no longer live (its row says how long that is).
STALE_INTERVALS = 3
#: Rows silent this long past their staleness are deleted by the other replicas' heartbeats. Until
#: then ``fleet`` and ``verify`` name a crashed replica (and a removed pod's name) as gone.
FORGET_AFTER = 3600.0
_ERROR_TEXT_MAX = 300
_CODE_RE = re.compile(r"^([A-Z][A-Z0-9_]{2,63}):")
#: Error codes of the worker's pipeline that mean the gateway, not the command, is at fault.
_GATEWAY_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "GATEWAY_UNAVAILABLE", "BREAKER_OPEN",
                            "ENDORSE_UNAVAILABLE", "SUBMIT_UNAVAILABLE", "COMMIT_STATUS_UNAVAILABLE"})


@cache
def _queries() -> dict[str, str]:
    text = resources.files("gxsubmit").joinpath("sql", "fleet.sql").read_text(encoding="utf-8")
    parts = re.split(r"^--\s*name:\s*(\w+)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def query(name: str, schema: str) -> sql.Composed:
    """One named statement of ``sql/fleet.sql`` for ``schema``."""
    subs = {"schema": sql.Identifier(schema), "schema_name": sql.Literal(schema)}
    return sql.SQL(_queries()[name]).format(**subs)


def catalog_digest(catalog: Catalog) -> str:
    """A short fingerprint of what a catalogue routes where and how: equal digests route alike."""
    h = hashlib.sha256()
    for name in sorted(catalog.routes):
        r = catalog.routes[name]
        h.update(repr((name, r.identity, r.role, r.channel, r.chaincode, r.function, r.args)).encode())
        h.update(b"\n")
    for ident, role in sorted(catalog.identities.items()):
        h.update(f"{ident}={role}\n".encode())
    return h.hexdigest()[:12]


# --- the reporter (supervisor side) -----------------------------------------------------------------


@dataclass
class _Seen:
    """The last error an identity (or the supervisor's own connection) showed, and when it began."""

    code: str
    kind: str
    text: str
    at: float


def _classify(w: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(code, kind, text) of the trouble a worker's status shows now, or None when it is fine.

    Kinds: ``database`` and ``gateway`` count for ``verify``'s error check; ``config`` and ``process``
    show as not connected; ``command`` is a command's own failure (a payload, a chaincode refusal).
    """
    state = w.get("state")
    last = str(w.get("last_error") or "")
    if state == "config_error":
        return "CONFIG_ERROR", "config", str(w.get("reason") or last or "configuration error")
    if state == "backoff":
        return "WORKER_DOWN", "process", f"worker not running ({w.get('last_exit') or 'not started'})"
    if w.get("db_ok") is False and state == "running":
        return "DB_UNAVAILABLE", "database", last or "database unavailable"
    if w.get("gateway_ok") is False and state == "running":
        return "GATEWAY_UNAVAILABLE", "gateway", last or "gateway unavailable"
    if w.get("breaker_open"):
        return "BREAKER_OPEN", "gateway", last or "circuit breaker open"
    if not last:
        return None
    m = _CODE_RE.match(last)
    code = m.group(1) if m else "ERROR"
    low = last.lower()
    if "database" in low or low.startswith("claim failed"):
        kind = "database"
    elif code in _GATEWAY_CODES or "gateway" in low:
        kind = "gateway"
    else:
        kind = "command"
    return code, kind, last


class FleetReporter:
    """This supervisor's row in the registry; every method but :meth:`observe` runs on the DB thread."""

    def __init__(self, cfg: Config, catalog: Callable[[], Catalog], *, started_at: float | None = None,
                 host: str | None = None) -> None:
        self.cfg = cfg
        self._catalog = catalog
        self.started_at = time.time() if started_at is None else started_at
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.stale_after = STALE_INTERVALS * cfg.fleet_interval
        self._next_beat = 0.0  # time.monotonic(); 0: at the first pass
        self._workers: Mapping[str, Mapping[str, Any]] = {}
        self._errors: dict[str, _Seen] = {}
        self._commits: dict[str, tuple[int, float]] = {}
        self._db_ok: bool | None = None
        self._db_error: _Seen | None = None
        self._conflict_logged = False
        self.beats = 0
        self.forgotten = 0

    # -- main thread: a new snapshot (immutable from here on; only references cross threads)

    def observe(self, workers: Mapping[str, Mapping[str, Any]], db_ok: bool | None,
                db_error: str | None) -> None:
        now = time.time()
        errors = dict(self._errors)
        commits = dict(self._commits)
        for name, w in workers.items():
            found = _classify(w)
            if found is not None:
                code, kind, text = found
                seen = errors.get(name)
                if seen is None or (seen.code, seen.text) != (code, text[:_ERROR_TEXT_MAX]):
                    errors[name] = _Seen(code, kind, text[:_ERROR_TEXT_MAX], now)
            n = int(w.get("committed") or 0)
            count, at = commits.get(name, (0, 0.0))
            if n != count:  # more: a commit now; fewer: the worker restarted and counts from 0 again
                commits[name] = (n, now if n > count else at)
        if db_ok is False:
            text = (db_error or "database unavailable")[:_ERROR_TEXT_MAX]
            if self._db_error is None or self._db_error.text != text:
                self._db_error = _Seen("DB_UNAVAILABLE", "database", text, now)
        self._errors, self._commits, self._workers, self._db_ok = errors, commits, dict(workers), db_ok

    # -- database thread

    def due_in(self) -> float:
        """Seconds until the next heartbeat is due (0 when it is).

        Not before the main loop's first snapshot: a row without identities would read as a replica
        that runs none.
        """
        if not self._workers:
            return 0.25
        return max(0.0, self._next_beat - time.monotonic())

    def _identities(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, w in sorted(self._workers.items()):
            state = str(w.get("state"))
            seen = self._errors.get(name)
            commit = self._commits.get(name)
            out[name] = {
                "state": state,
                "gateway": bool(w.get("gateway_ok")) and state == "running",
                "database": bool(w.get("db_ok")),
                "in_flight": int(w.get("in_flight") or 0),
                "committed": int(w.get("committed") or 0),
                "restarts": int(w.get("restarts") or 0),
                "error_code": seen.code if seen else None,
                "error_kind": seen.kind if seen else None,
                "error": seen.text if seen else None,
                "error_age_s": round(now - seen.at, 1) if seen else None,
                "last_commit_age_s": round(now - commit[1], 1) if commit and commit[1] else None,
            }
        return out

    def _params(self) -> dict[str, Any]:
        now = time.time()
        catalog = self._catalog()
        db = self._db_error
        return {
            "worker_id": self.cfg.worker_id,
            "node": self.cfg.node_name,
            "host": self.host,
            "pid": self.pid,
            "version": __version__,
            "digest": catalog_digest(catalog),
            "source": catalog.source,
            "types": catalog.all_types(),
            "identities": Jsonb(self._identities(now)),
            "db_ok": self._db_ok,
            "db_error_code": db.code if db else None,
            "db_error_at": datetime.fromtimestamp(db.at, UTC) if db else None,
            "stale_after_s": self.stale_after,
            "started_at": datetime.fromtimestamp(self.started_at, UTC),
            "forget_s": FORGET_AFTER,
        }

    async def beat(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Rewrite this replica's row (one statement); the next is due one interval later."""
        self._next_beat = time.monotonic() + self.cfg.fleet_interval
        cur = await conn.execute(query("beat", self.cfg.schema), self._params())
        row = await cur.fetchone()
        self.beats += 1
        if row is None:
            return
        forgotten, other_host = int(row[0]), row[1]
        if forgotten:
            self.forgotten += forgotten
            log.info("Forgot replicas silent for over an hour", extra={"count": forgotten})
        if other_host and not self._conflict_logged:
            self._conflict_logged = True
            log.error("Another live supervisor on another host uses this worker id; give each replica "
                      "its own GXSUBMIT_WORKER_ID",
                      extra={"worker_id": self.cfg.worker_id, "other_host": other_host})

    async def sweep(self, conn: psycopg.AsyncConnection[Any], own_types: Sequence[str]) -> int:
        """Dead-letter PENDING rows no replica has routed for the grace period; returns how many."""
        cur = await conn.execute(query("fail_unroutable", self.cfg.schema),
                                 {"types": list(own_types), "grace_s": self.cfg.unroutable_grace})
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def stop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Graceful exit: no longer live; the row stays for the grace period and ``fleet``."""
        await conn.execute(query("stop", self.cfg.schema), {
            "worker_id": self.cfg.worker_id, "host": self.host, "pid": self.pid,
            "identities": Jsonb(self._identities(time.time()))})


# --- reading the registry (operator side) ----------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """One row of ``gxsubmit_replicas`` as ``fleet`` and ``verify`` see it (ages by the server's clock)."""

    worker_id: str
    node: str
    host: str
    pid: int
    version: str
    catalog_digest: str
    catalog_source: str
    routed_types: tuple[str, ...]
    identities: Mapping[str, Mapping[str, Any]]
    db_ok: bool | None
    db_error_code: str | None
    db_error_age_s: float | None
    stale_after_s: float
    stopped: bool
    heartbeat_age_s: float
    uptime_s: float
    live: bool

    def error_age(self, ident: Mapping[str, Any]) -> float | None:
        """How long ago (now, by the server's clock) an identity's last error began."""
        age = ident.get("error_age_s")
        return None if age is None else float(age) + self.heartbeat_age_s

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["routed_types"] = list(self.routed_types)
        doc["identities"] = {k: dict(v) for k, v in self.identities.items()}
        return doc


async def read_fleet(conn: psycopg.AsyncConnection[Any], schema: str) -> list[Replica]:
    """Every registered replica, live or not, by worker id."""
    cur = await conn.execute(query("replicas", schema))
    out = []
    for r in await cur.fetchall():
        out.append(Replica(
            worker_id=r[0], node=r[1], host=r[2], pid=int(r[3]), version=r[4], catalog_digest=r[5],
            catalog_source=r[6], routed_types=tuple(r[7] or ()), identities=dict(r[8] or {}), db_ok=r[9],
            db_error_code=r[10], db_error_age_s=r[11], stale_after_s=float(r[12]), stopped=bool(r[13]),
            heartbeat_age_s=float(r[14]), uptime_s=float(r[15]), live=bool(r[16])))
    return out


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def identity_text(name: str, ident: Mapping[str, Any], rep: Replica) -> str:
    """``name=ok(in flight 3)`` or ``name=<state>[: error]``: one identity's state in one token."""
    if ident.get("gateway") and ident.get("database"):
        head = f"{name}=ok({ident.get('in_flight', 0)} in flight)"
    else:
        head = f"{name}={ident.get('state')}"
        if ident.get("state") == "running":
            head += "(no gateway)" if not ident.get("gateway") else "(no database)"
    code = ident.get("error_code")
    if code:
        head += f" last error {code} {_dur(rep.error_age(ident))} ago"
    return head


def replica_line(rep: Replica) -> str:
    state = "live" if rep.live else ("stopped" if rep.stopped else "GONE")
    idents = ", ".join(identity_text(n, i, rep) for n, i in sorted(rep.identities.items())) or "no identities"
    db = "" if rep.db_ok is not False else " supervisor database DOWN;"
    return (f"{rep.worker_id} {state} node={rep.node} host={rep.host} pid={rep.pid} v{rep.version} "
            f"catalogue={rep.catalog_digest} ({len(rep.routed_types)} types) up {_dur(rep.uptime_s)} "
            f"beat {_dur(rep.heartbeat_age_s)} ago;{db} {idents}")


def summary_line(replicas: Sequence[Replica]) -> str:
    """One line for ``gxsubmit status``: live replicas, nodes, versions and catalogues."""
    live = [r for r in replicas if r.live]
    gone = [r for r in replicas if not r.live and not r.stopped]
    if not replicas:
        return "fleet: no replica has registered (none running, or all older than this release)"
    builds = sorted({(r.version, r.catalog_digest) for r in live})
    text = (f"fleet: {len(live)} live replica{'s' if len(live) != 1 else ''} on "
            f"{len({r.node for r in live})} node{'s' if len({r.node for r in live}) != 1 else ''}")
    if len(builds) == 1:
        text += f", version {builds[0][0]}, catalogue {builds[0][1]}"
    elif builds:
        text += ", rollout in progress: " + "; ".join(f"{v}/{d}" for v, d in builds)
    if gone:
        names = ", ".join(f"{r.worker_id} {_dur(r.heartbeat_age_s)} ago" for r in gone)
        text += f"; gone (no heartbeat): {names}"
    return text


def format_fleet(replicas: Sequence[Replica], *, all_rows: bool = False) -> str:
    shown = [r for r in replicas if r.live or all_rows or not r.stopped]
    lines = [replica_line(r) for r in shown]
    lines.append(summary_line(replicas))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--all", action="store_true", help="also list replicas that stopped gracefully")


def run(cfg: Config, args: argparse.Namespace) -> int:
    """``gxsubmit fleet``: the registered replicas, one line each (live and gone; --all adds stopped)."""
    from gxsubmit.exitcodes import RET_OK
    from gxsubmit.opcommand import connect, run_command  # one-line errors like the other operator commands

    async def body() -> int:
        conn = await connect(cfg)
        try:
            replicas = await read_fleet(conn, cfg.schema)
        finally:
            await conn.close()
        if args.json:
            print(json.dumps({"replicas": [r.to_json() for r in replicas], "summary": summary_line(replicas)},
                             sort_keys=True))
        else:
            print(format_fleet(replicas, all_rows=args.all))
        sys.stdout.flush()
        return RET_OK

    return run_command("fleet", cfg, body)
