"""``gxsubmit verify``: the post-deployment checklist in one command, read from the database.

It replaces the operators' manual steps (pods running, spread over nodes, a "connected" log line per
identity and pod, commands being processed, no database errors in the logs) with what the replicas
record in ``gxsubmit_replicas`` (gxsubmit.fleet) and the queue itself: one PASS/FAIL line per check with
its evidence, exit 0 only when every check passes. The same command serves Kubernetes (``kubectl exec``
or a Job after each rollout) and systemd hosts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gxsubmit.fleet import Replica, _dur, query, read_fleet

if TYPE_CHECKING:
    from gxsubmit.config import Config

__all__ = ["Check", "Flow", "add_arguments", "evaluate", "run"]

#: Error kinds (gxsubmit.fleet._classify) that mean the deployment, not a command, is in trouble.
INFRA_KINDS = ("database", "gateway")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    evidence: str

    def line(self, width: int = 11) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name.ljust(width)} {self.evidence}"


@dataclass(frozen=True)
class Flow:
    """The queue as ``verify`` needs it (sql/fleet.sql ``flow`` and the outbox statistics)."""

    due: int
    oldest_due_s: float | None
    in_flight: int
    failed: int
    failed_by_code: Mapping[str, int]
    failed_recent: int


def _replica_count(live: Sequence[Replica], others: Sequence[Replica], want: int | None) -> Check:
    names = ", ".join(f"{r.worker_id} ({r.node})" for r in live) or "none"
    ok = len(live) == want if want is not None else len(live) >= 1
    evidence = f"{len(live)} live" + (f", want {want}" if want is not None else "") + f": {names}"
    if not ok:
        gone = [r for r in others if not r.stopped]
        stopped = [r for r in others if r.stopped]
        if gone:
            evidence += "; missing: " + ", ".join(
                f"{r.worker_id} on {r.node} (no heartbeat for {_dur(r.heartbeat_age_s)}; gone after "
                f"{r.stale_after_s:g}s without one)" for r in gone)
        if stopped:
            evidence += "; stopped: " + ", ".join(
                f"{r.worker_id} ({_dur(r.heartbeat_age_s)} ago)" for r in stopped)
        if not others and not live:
            evidence += " (no replica has registered: is the service running this release?)"
    return Check("replicas", ok, evidence)


def _nodes(live: Sequence[Replica]) -> Check:
    by_node: dict[str, list[str]] = {}
    for r in live:
        by_node.setdefault(r.node, []).append(r.worker_id)
    shared = {n: ws for n, ws in by_node.items() if len(ws) > 1}
    if shared:
        return Check("nodes", False, "; ".join(
            f"{' and '.join(ws)} share node {n}" for n, ws in sorted(shared.items())))
    if not live:
        return Check("nodes", False, "no live replica")
    spread = ", ".join(f"{r.worker_id}={r.node}" for r in live)
    return Check("nodes", True, f"{len(by_node)} distinct: {spread}")


def _identities(live: Sequence[Replica]) -> Check:
    bad: list[str] = []
    total = 0
    for r in live:
        if not r.identities:
            bad.append(f"{r.worker_id}: runs no identity")
        for name, ident in sorted(r.identities.items()):
            total += 1
            if ident.get("gateway") and ident.get("database"):
                continue
            what = str(ident.get("state"))
            if ident.get("state") == "running":
                what = "gateway not connected" if not ident.get("gateway") else "database not connected"
            err = f": {ident.get('error_code')} {ident.get('error')}" if ident.get("error_code") else ""
            bad.append(f"{r.worker_id}/{name} {what}{err}")
    if bad:
        return Check("identities", False, "; ".join(bad))
    if not live:
        return Check("identities", False, "no live replica")
    per = "/".join(map(str, sorted({len(r.identities) for r in live})))
    names = ", ".join(sorted({n for r in live for n in r.identities}))
    return Check("identities", True, f"{total} connected ({per} on each of {len(live)} "
                                     f"replica{'s' if len(live) != 1 else ''}): {names}")


def _build(live: Sequence[Replica]) -> Check:
    builds: dict[tuple[str, str], list[str]] = {}
    for r in live:
        builds.setdefault((r.version, r.catalog_digest), []).append(r.worker_id)
    if len(builds) > 1:
        return Check("version", False, "rollout in progress: " + "; ".join(
            f"version {v} catalogue {d} on {', '.join(ws)}" for (v, d), ws in sorted(builds.items())))
    if not builds:
        return Check("version", False, "no live replica")
    (v, d), ws = next(iter(builds.items()))
    return Check("version", True, f"version {v}, catalogue {d} on all {len(ws)}")


def _flow(live: Sequence[Replica], flow: Flow, window: float, max_due_age: float) -> Check:
    last_commit: float | None = None
    for r in live:
        for ident in r.identities.values():
            age = ident.get("last_commit_age_s")
            if age is not None:
                a = float(age) + r.heartbeat_age_s
                last_commit = a if last_commit is None else min(last_commit, a)
    seen = "none seen" if last_commit is None else f"{_dur(last_commit)} ago"
    evidence = (f"{flow.due} due PENDING (oldest due {_dur(flow.oldest_due_s) if flow.due else '-'}), "
                f"{flow.in_flight} in flight, last commit {seen}")
    if flow.due and flow.oldest_due_s is not None and flow.oldest_due_s > max_due_age:
        return Check("flow", False, f"{evidence}; oldest due row waits longer than {_dur(max_due_age)}")
    if (flow.due or flow.in_flight) and (last_commit is None or last_commit > window):
        return Check("flow", False, f"{evidence}; work is waiting but no commit in the last {_dur(window)}")
    return Check("flow", True, evidence if flow.due or flow.in_flight else f"{evidence} (queue idle)")


def _errors(live: Sequence[Replica], window: float) -> Check:
    found: list[str] = []
    for r in live:
        if r.db_error_code and r.db_error_age_s is not None and r.db_error_age_s <= window:
            found.append(f"{r.worker_id}/supervisor {r.db_error_code} {_dur(r.db_error_age_s)} ago")
        for name, ident in sorted(r.identities.items()):
            age = r.error_age(ident)
            if ident.get("error_kind") in INFRA_KINDS and age is not None and age <= window:
                found.append(f"{r.worker_id}/{name} {ident.get('error_code')} {_dur(age)} ago: "
                             f"{ident.get('error')}")
    if found:
        return Check("errors", False, "; ".join(found))
    return Check("errors", True, f"no database or gateway error in the last {_dur(window)}")


def _dead_letters(flow: Flow, window: float) -> Check:
    by_code = sorted(flow.failed_by_code.items(), key=lambda kv: (-kv[1], kv[0]))
    codes = ", ".join(f"{c or '(none)'} {n}" for c, n in by_code)
    text = f"{flow.failed} FAILED row{'s' if flow.failed != 1 else ''}" + (f" ({codes})" if codes else "")
    return Check("dead", True, f"{text}; {flow.failed_recent} new in the last {_dur(window)} (counted, "
                                "not judged: see gxsubmit status, requeue)")


def evaluate(replicas: Sequence[Replica], flow: Flow, *, want: int | None, window: float = 300.0,
             max_due_age: float = 60.0) -> list[Check]:
    """The checklist over one reading of the registry and the queue (pure: tested without a database)."""
    live = [r for r in replicas if r.live]
    others = [r for r in replicas if not r.live]
    return [
        _replica_count(live, others, want),
        _nodes(live),
        _identities(live),
        _build(live),
        _flow(live, flow, window, max_due_age),
        _errors(live, window),
        _dead_letters(flow, window),
    ]


def report(checks: Sequence[Check]) -> str:
    failed = [c.name for c in checks if not c.ok]
    tail = (f"verify: all {len(checks)} checks passed" if not failed
            else f"verify: {len(failed)} of {len(checks)} checks failed: {', '.join(failed)}")
    return "\n".join([*(c.line() for c in checks), tail])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=None, metavar="N",
                        help="live replicas expected (default: at least one)")
    parser.add_argument("--window", type=float, default=300.0, metavar="SECONDS",
                        help="how far back errors, commits and new dead letters count (default 300)")
    parser.add_argument("--max-due-age", type=float, default=60.0, metavar="SECONDS",
                        help="longest a due PENDING row may wait (default 60)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


async def _read(cfg: Config, window: float) -> tuple[list[Replica], Flow]:
    from gxsubmit.opcommand import open_store

    store = await open_store(cfg)
    try:
        conn = await store.connection()
        replicas = await read_fleet(conn, cfg.schema)
        cur = await conn.execute(query("flow", cfg.schema), {"window_s": window})
        row = await cur.fetchone()
        assert row is not None
        stats = await store.stats()
    finally:
        await store.close()
    flow = Flow(due=int(row[0]), oldest_due_s=row[1], in_flight=int(row[2]), failed=stats.by_status["FAILED"],
                failed_by_code=dict(stats.failed_by_code), failed_recent=int(row[3]))
    return replicas, flow


def run(cfg: Config, args: argparse.Namespace) -> int:
    from gxsubmit.exitcodes import RET_FAIL, RET_OK, RET_USAGE
    from gxsubmit.opcommand import run_command

    if args.replicas is not None and args.replicas < 1:
        print("gxsubmit verify: --replicas must be at least 1", file=sys.stderr)
        return RET_USAGE

    async def body() -> int:
        replicas, flow = await _read(cfg, args.window)
        checks = evaluate(replicas, flow, want=args.replicas, window=args.window,
                          max_due_age=args.max_due_age)
        ok = all(c.ok for c in checks)
        if args.json:
            doc: dict[str, Any] = {"ok": ok, "checks": [asdict(c) for c in checks],
                                   "replicas": [r.to_json() for r in replicas]}
            print(json.dumps(doc, sort_keys=True))
        else:
            print(report(checks))
        return RET_OK if ok else RET_FAIL

    return run_command("verify", cfg, body)
