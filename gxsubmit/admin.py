"""Bodies of the operator commands ``migrate``, ``enqueue``, ``status`` and ``requeue``.

Every failure an operator can act on (database down, schema not migrated, bad JSON) is one line on
stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from gxsubmit.config import Config
from gxsubmit.exitcodes import RET_CONFIG, RET_FAIL, RET_OK, RET_UNAVAILABLE, RET_USAGE
from gxsubmit.fleet import read_fleet, summary_line
from gxsubmit.opcommand import CommandFailed, connect, not_migrated, open_store, run_command, uuid_arg
from gxsubmit.outbox import (
    PRUNE_BATCH,
    STATUSES,
    QueueStats,
    enqueue,
    migrate,
    schema_version,
)

__all__ = [
    "add_enqueue_arguments",
    "add_migrate_arguments",
    "add_prune_arguments",
    "add_record_expiry_arguments",
    "add_requeue_arguments",
    "add_status_arguments",
    "run_enqueue",
    "run_migrate",
    "run_prune",
    "run_record_expiry",
    "run_requeue",
    "run_status",
]


# -- migrate ----------------------------------------------------------------------------------------


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    """``migrate`` takes the database settings, and the legacy outbox adoption's options."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--legacy-outbox", metavar="TABLE",
                       help="adopt an existing outbox table of the GX services, e.g. '\"OutboxCommand\"' or "
                            "'gx.\"OutboxCommand\"': its producers' rows are queued here, statuses written "
                            "back")
    group.add_argument("--remove-legacy-outbox", metavar="TABLE",
                       help="undo --legacy-outbox: unfinished rows go back to TABLE for the old worker")
    parser.add_argument("--legacy-lock-timeout", type=float, metavar="SECONDS", default=300.0,
                        help="the old worker's LOCK_TIMEOUT: rows it holds at adoption start here once their "
                             "lock is this old (default: %(default)s, its code default)")
    parser.add_argument("--legacy-max-retries", type=int, metavar="N", default=5,
                        help="with --remove-legacy-outbox: the old worker's MAX_RETRIES; gxsubmit's FAILED "
                             "rows get at least this many attempts so it does not retry them "
                             "(default: %(default)s)")


def run_migrate(cfg: Config, args: argparse.Namespace) -> int:
    async def body() -> int:
        async with await connect(cfg) as conn:
            before = await schema_version(conn, cfg.schema)
            version = await migrate(conn, cfg.schema)
            change = "already at" if before == version else f"migrated from {before or 0} to"
            print(f"schema {cfg.schema}: {change} version {version}")
            legacy_table = getattr(args, "legacy_outbox", None)
            removed_table = getattr(args, "remove_legacy_outbox", None)
            if legacy_table or removed_table:
                lines = await _legacy_outbox(conn, cfg, legacy_table, removed_table, args)
                print("\n".join(lines))
        return RET_OK

    return run_command("migrate", cfg, body)


async def _legacy_outbox(conn: psycopg.AsyncConnection[Any], cfg: Config, adopt_table: str | None,
                         remove_table: str | None, args: argparse.Namespace) -> list[str]:
    """``migrate --legacy-outbox`` / ``--remove-legacy-outbox`` (gxsubmit.legacy)."""
    from gxsubmit import legacy
    from gxsubmit.catalog import CatalogError, load_catalog

    try:
        if remove_table:
            return (await legacy.remove(conn, cfg.schema, remove_table,
                                        max_retries=args.legacy_max_retries)).lines()
        assert adopt_table is not None
        try:
            routed: list[str] | None = load_catalog(cfg.catalog).all_types()
        except CatalogError as exc:
            raise CommandFailed(RET_CONFIG, f"catalogue: {exc}") from None
        report = await legacy.adopt(conn, cfg.schema, adopt_table, lock_timeout_s=args.legacy_lock_timeout,
                                    routed_types=routed)
        return report.lines()
    except legacy.LegacyError as exc:
        raise CommandFailed(RET_FAIL, str(exc)) from None
    except psycopg.errors.LockNotAvailable:
        raise CommandFailed(RET_UNAVAILABLE, "the legacy table stayed locked by other transactions for 10 s "
                                     "(a long producer transaction?); nothing changed, try again") from None


# -- enqueue ----------------------------------------------------------------------------------------


def add_enqueue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", metavar="TYPE", help="command type, e.g. CREATE_USER")
    parser.add_argument("--payload", required=True, metavar="JSON", help="the command's JSON payload")
    parser.add_argument("--request-id", metavar="ID", help="idempotency key (default: the new row id)")
    parser.add_argument("--tenant", default="default", help="tenant id (default: %(default)s)")
    parser.add_argument("--service", default="cli", help="producing service name (default: %(default)s)")
    parser.add_argument("--order-key", metavar="KEY",
                        help="submit after every earlier command with this key (e.g. an account id)")


def run_enqueue(cfg: Config, args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        print(f"gxsubmit enqueue: --payload is not valid JSON: {exc}", file=sys.stderr)
        return RET_USAGE

    async def body() -> int:
        async with await connect(cfg) as conn:
            if await schema_version(conn, cfg.schema) is None:
                raise not_migrated(cfg)
            row_id, created = await enqueue(
                conn,
                command_type=args.type,
                payload=payload,
                request_id=args.request_id,
                tenant_id=args.tenant,
                service=args.service,
                schema=cfg.schema,
                order_key=args.order_key,
            )
        print(f"{row_id} {'created' if created else 'exists (same tenant and request id)'}")
        return RET_OK

    return run_command("enqueue", cfg, body)


# -- status -----------------------------------------------------------------------------------------


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _stats_json(stats: QueueStats, waiting: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    by_type: dict[str, dict[str, int]] = {}
    for (status, ctype), n in sorted(stats.by_status_type.items()):
        by_type.setdefault(ctype, {})[status] = n
    return {
        "by_status": stats.by_status,
        "by_type": by_type,
        "oldest_pending_age_s": stats.oldest_pending_age_s,
        "failed_by_code": stats.failed_by_code,
        "retrying_by_code": stats.retrying_by_code,
        "committed_estimated": stats.committed_estimated,
        "waiting_for_order_key": {"rows": waiting[0], "keys": waiting[1]},
    }


def format_status(stats: QueueStats, waiting: tuple[int, int] = (0, 0)) -> str:
    """A fixed-width table: one row per command type, one column per status."""
    estimated = stats.committed_estimated

    def cell(status: str, n: int | None) -> str:
        if status == "COMMITTED" and estimated:
            return "-" if n is None else f"~{n}"
        return str(n or 0)

    types = sorted({ctype for _, ctype in stats.by_status_type})
    head = ["TYPE", *STATUSES]
    rows = [[t, *(cell(s, stats.by_status_type.get((s, t), None if estimated else 0)) for s in STATUSES)]
            for t in types]
    rows.append(["TOTAL", *(cell(s, stats.by_status.get(s, 0)) for s in STATUSES)])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(head), *(line(r) for r in rows), ""]
    age = stats.oldest_pending_age_s
    out.append("oldest pending: " + ("none" if age is None else f"{age:.1f} s"))
    if estimated:
        out.append("COMMITTED: the planner's estimate (pg_class.reltuples); an exact count would read "
                   "the whole retained table")
    if waiting[0]:
        out.append(f"waiting behind an earlier command of their order key: {waiting[0]} PENDING "
                   f"row{'s' if waiting[0] != 1 else ''} on {waiting[1]} key{'s' if waiting[1] != 1 else ''}")
    for title, counts in (
        ("retrying (not finished, last try failed) by error code:", stats.retrying_by_code),
        ("failed by error code:", stats.failed_by_code),
    ):
        if counts:
            out.append(title)
            out.extend(
                f"  {code or '(none)'}: {n}"
                for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            )
    return "\n".join(out)


def run_status(cfg: Config, args: argparse.Namespace) -> int:
    async def body() -> int:
        store = await open_store(cfg)
        try:
            stats = await store.stats()
            waiting = await store.waiting_for_key()
            replicas = await read_fleet(await store.connection(), cfg.schema)
        finally:
            await store.close()
        if args.json:
            doc = _stats_json(stats, waiting)
            doc["fleet"] = {"summary": summary_line(replicas), "live": sum(r.live for r in replicas)}
            print(json.dumps(doc, sort_keys=True))
        else:
            print(format_status(stats, waiting))
            print(summary_line(replicas))
        return RET_OK

    return run_command("status", cfg, body)


# -- requeue ----------------------------------------------------------------------------------------


def add_requeue_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="append", type=uuid_arg, metavar="ID",
                       help="a FAILED row's id (repeatable)")
    which.add_argument("--error-code", metavar="CODE", help="every FAILED row with this error code")
    which.add_argument("--all-failed", action="store_true", help="every FAILED row")


def run_requeue(cfg: Config, args: argparse.Namespace) -> int:
    async def body() -> int:
        store = await open_store(cfg)
        try:
            n = await store.requeue(
                ids=args.ids or (), error_code=args.error_code, all_failed=bool(args.all_failed)
            )
        finally:
            await store.close()
        print(f"requeued {n} FAILED row{'s' if n != 1 else ''} (PENDING now, attempts reset)")
        return RET_OK

    return run_command("requeue", cfg, body)


# -- prune ------------------------------------------------------------------------------------------

#: The shortest retention prune accepts. A pruned row no longer blocks its (tenant_id, request_id): a
#: producer that sends the same request again afterwards enqueues a new command, submitted again.
PRUNE_MIN_AGE_S = 3600.0
#: A progress line on stderr after about this many deleted rows.
PRUNE_PROGRESS_EVERY = 100_000
_AGE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _age(text: str) -> float:
    """A duration such as 30d, 12h, 90m or 3600s (at least an hour)."""
    raw = text.strip().lower()
    try:
        value = float(raw[:-1]) * _AGE_UNITS[raw[-1:]]
    except (KeyError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30d, 12h, 90m)")
    if value < PRUNE_MIN_AGE_S:
        raise argparse.ArgumentTypeError(
            f"{text!r} is shorter than an hour: a pruned row no longer stops its request id from being "
            "enqueued and submitted again"
        )
    return value


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--older-than", required=True, type=_age, metavar="AGE",
        help="delete COMMITTED rows committed longer ago than this (30d, 12h, ...; at least 1h). Keep it "
        "longer than any producer may retry a request: a pruned request id can be enqueued again",
    )
    parser.add_argument("--batch", type=int, default=PRUNE_BATCH, metavar="N",
                        help=f"rows per statement (default {PRUNE_BATCH})")
    parser.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")


def run_prune(cfg: Config, args: argparse.Namespace) -> int:
    if args.batch < 1:
        print("gxsubmit prune: --batch must be at least 1", file=sys.stderr)
        return RET_USAGE

    shown = 0

    def progress(total: int) -> None:  # a first prune of a long history takes minutes: show it moving
        nonlocal shown
        if total - shown >= PRUNE_PROGRESS_EVERY:
            shown = total
            print(f"gxsubmit prune: {total} rows deleted so far", file=sys.stderr, flush=True)

    async def body() -> int:
        store = await open_store(cfg)
        try:
            n, cutoff = await store.prune(args.older_than, batch=args.batch, dry_run=args.dry_run,
                                          progress=progress)
        finally:
            await store.close()
        when = cutoff.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {n} COMMITTED row{'s' if n != 1 else ''} committed before {when} "
              "(FAILED and unfinished rows are never pruned)")
        return RET_OK

    return run_command("prune", cfg, body, bounded=False)


# -- record-expiry ----------------------------------------------------------------------------------


def add_record_expiry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "certificates", nargs="+", metavar="CERT",
        help="a rotated-out signing certificate (PEM), e.g. the old <identity>-cert file of the wallet",
    )


def _certificate(path: str, msp_id: str) -> tuple[str, datetime, str, str]:
    """(fingerprint, expiry, subject, creator fingerprint) of a PEM certificate file; one line if it is
    not one. Rows from before migration 0008 name the certificate's DER hash, later ones the serialized
    creator (``msp_id`` and the file's bytes as read)."""
    from gxsubmit.fabric.identity import creator_fingerprint, serialize_identity
    from gxsubmit.wallet import WalletError, certificate_fingerprint, load_certificate

    try:
        pem, cert = load_certificate(Path(path))
    except WalletError as exc:  # "<path>: <reason>", never the file's content
        raise CommandFailed(RET_USAGE, str(exc)) from None
    return (certificate_fingerprint(cert), cert.not_valid_after_utc, cert.subject.rfc4514_string(),
            creator_fingerprint(serialize_identity(msp_id, pem)))


def run_record_expiry(cfg: Config, args: argparse.Namespace) -> int:
    async def body() -> int:
        # every file is checked before any write
        certs = [(path, *_certificate(path, cfg.msp_id)) for path in args.certificates]
        store = await open_store(cfg)
        try:
            for path, fingerprint, not_after, subject, creator_fp in certs:
                n = (await store.record_creator_expiry(fingerprint, not_after)
                     + await store.record_creator_expiry(creator_fp, not_after))
                when = not_after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                print(f"{path} ({subject}, sha256 {fingerprint[:16]}...), valid until {when}: expiry "
                      f"recorded on {n} unfinished row{'s' if n != 1 else ''} that had none")
        finally:
            await store.close()
        print("Such a row gets a new transaction id once that time is an hour past and the gateway peer's "
              "ledger does not know its old one (docs/operations.md, Rotate wallet credentials).")
        return RET_OK

    return run_command("record-expiry", cfg, body)
