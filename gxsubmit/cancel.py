"""``gxsubmit cancel``: end unfinished rows an operator gives up on, FAILED with CANCELLED.

Exactly once still holds. A row that was never handed to the orderer (no ``submitted_at``: the worker
writes SUBMITTED before Submit, fenced by its lease) is cancelled in one statement that re-checks
that condition, so a worker that holds it finds its lease gone before it can submit. A row whose
transaction may be on the ledger is first resolved through the gateway (CommitStatus of its tx id):
a definite INVALID outcome means that tx id can never commit, so it is cancelled (a later requeue
draws a new one); VALID, not yet settled, or no answer: it is refused with a one-line reason, never
cancelled on a guess. A cancelled row no longer holds its order key: the key's next row is woken.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from gxsubmit.config import Config
from gxsubmit.exitcodes import RET_FAIL, RET_OK
from gxsubmit.opcommand import connect, run_command, uuid_arg
from gxsubmit.outbox import _compose

__all__ = ["Candidate", "add_arguments", "run"]

#: How long the resolution of one tx id may take (a CommitStatus for a tx id the ledger lacks waits
#: for its whole deadline).
_RESOLVE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A row the operator named, as it was when read."""

    id: uuid.UUID
    status: str
    command_type: str
    tx_id: str | None
    may_be_on_ledger: bool
    request_id: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="append", type=uuid_arg, metavar="ID",
                       help="an unfinished row's id (repeatable)")
    which.add_argument("--request-id", dest="request_ids", action="append", metavar="REQUEST_ID",
                       help="an unfinished row's request id, with --tenant (repeatable)")
    which.add_argument("--error-code", metavar="CODE",
                       help="every unfinished row whose last try failed with this error code")
    parser.add_argument("--tenant", default="default", help="tenant of --request-id (default: default)")


class _Store:
    """The three statements of a cancel (queries.sql), on one autocommit connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], schema: str) -> None:
        self.conn = conn
        self.schema = schema

    async def candidates(self, ids: Sequence[uuid.UUID], tenant: str, request_ids: Sequence[str],
                         error_code: str | None) -> list[Candidate]:
        cur = await self.conn.execute(_compose("cancel_candidates", self.schema), {
            "ids": list(ids), "tenant": tenant, "request_ids": list(request_ids), "error_code": error_code})
        return [Candidate(*r) for r in await cur.fetchall()]

    async def cancel_unsent(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        cur = await self.conn.execute(_compose("cancel_unsent", self.schema), {"ids": list(ids)})
        row = await cur.fetchone()
        return set(row[0]) if row is not None and row[0] is not None else set()

    async def cancel_resolved(self, id: uuid.UUID, tx_id: str, code_name: str, block: int) -> bool:
        error = (f"cancelled by an operator (gxsubmit cancel); its transaction {tx_id} committed "
                 f"{code_name} in block {block}, so it can never commit")
        cur = await self.conn.execute(_compose("cancel_resolved", self.schema), {
            "id": id, "tx_id": tx_id, "code": code_name, "error": error})
        row = await cur.fetchone()
        return bool(row and row[0])


class _Resolver:
    """CommitStatus through the gateway, as the identity the row's command type is routed to."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._gateway: Any = None
        self._signers: dict[str, Any] = {}

    async def status(self, command_type: str, tx_id: str) -> tuple[str, int, int] | str:
        """(code name, code, block) of the tx id, or a one-line reason there is no definite answer."""
        from gxsubmit.catalog import CatalogError, load_catalog
        from gxsubmit.fabric import Deadlines, FabricError, GatewayClient, SigningIdentity
        from gxsubmit.workerboot import ConfigProblem, boot

        cfg = self.cfg
        try:
            route = load_catalog(cfg.catalog).route(command_type)
        except CatalogError as exc:
            return f"cannot resolve it: catalogue: {exc}"
        if route is None:
            return f"cannot resolve it: no catalogue route for {command_type!r}"
        signer = self._signers.get(route.identity)
        if signer is None:
            try:
                b = boot(cfg, route.identity)
            except ConfigProblem as exc:
                return f"cannot resolve it: {exc}"
            signer = self._signers[route.identity] = SigningIdentity.from_wallet(b.wallet_identity)
            if self._gateway is None:
                self._gateway = GatewayClient(
                    target=cfg.gateway, tls_root=b.tls_root, server_name=cfg.server_name,
                    client_cert=b.client_cert, client_key=b.client_key,
                    deadlines=Deadlines(commit_status=_RESOLVE_TIMEOUT_S), keepalive_s=cfg.keepalive)
        try:
            result = await self._gateway.commit_status(
                signer, channel=cfg.channel or route.channel, tx_id=tx_id,
                timeout=min(_RESOLVE_TIMEOUT_S, cfg.commit_timeout))
        except FabricError as err:
            text = str(err)
            return f"CommitStatus has no answer ({text[:160]})"
        return result.code_name, result.code, result.block_number

    async def close(self) -> None:
        if self._gateway is not None:
            await self._gateway.close()


async def cancel(cfg: Config, store: _Store, resolver: _Resolver, *, ids: Sequence[uuid.UUID] = (),
                 tenant: str = "default", request_ids: Sequence[str] = (), error_code: str | None = None,
                 ) -> tuple[list[uuid.UUID], list[str]]:
    """Cancel what can be; return (cancelled ids, one line per row left as it was and why)."""
    from gxsubmit.fabric import ErrorClass, classify_validation_code

    found = await store.candidates(ids, tenant, request_ids, error_code)
    refused: list[str] = []
    named = {c.id for c in found} | {c.request_id for c in found}
    refused += [f"{i}: no such row" for i in ids if i not in named]
    refused += [f"request {r!r} of tenant {tenant!r}: no such row" for r in request_ids if r not in named]
    live = [c for c in found if c.status in ("PENDING", "CLAIMED", "SUBMITTED")]
    refused += [f"{c.id}: already {c.status}, nothing to cancel" for c in found if c not in live]
    done = await store.cancel_unsent([c.id for c in live if not c.may_be_on_ledger])
    for c in live:
        if c.id in done:
            continue
        if not c.tx_id:
            refused.append(f"{c.id}: submitted meanwhile and its tx id is not recorded yet; run cancel again")
            continue
        answer = await resolver.status(c.command_type, c.tx_id)
        if isinstance(answer, str):
            refused.append(f"{c.id}: transaction {c.tx_id} may still reach the ledger: {answer}; "
                           "not cancelled")
            continue
        name, code, block = answer
        cls = classify_validation_code(code)
        if cls is None:
            refused.append(f"{c.id}: transaction {c.tx_id} committed VALID in block {block}; not cancelled "
                           "(its worker records it as COMMITTED)")
        elif cls in (ErrorClass.DUPLICATE, ErrorClass.TRANSIENT):
            refused.append(f"{c.id}: transaction {c.tx_id} is {name}, not settled; not cancelled")
        elif await store.cancel_resolved(c.id, c.tx_id, name, block):
            done.add(c.id)
        else:
            refused.append(f"{c.id}: changed while it was resolved (a new try or a commit); run cancel again")
    return [c.id for c in live if c.id in done], refused


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Entry point of ``gxsubmit cancel``: 0 when every named unfinished row was cancelled, else 1.

    Connects and reports failures as the other operator commands do (``opcommand``): the database CA,
    no prepared statements behind a pooler, one line per failure."""

    async def body() -> int:
        async with await connect(cfg) as conn:
            resolver = _Resolver(cfg)
            try:
                cancelled, refused = await cancel(
                    cfg, _Store(conn, cfg.schema), resolver, ids=args.ids or (), tenant=args.tenant,
                    request_ids=args.request_ids or (), error_code=args.error_code)
            finally:
                await resolver.close()
        for line in refused:
            print(f"gxsubmit cancel: {line}", file=sys.stderr)
        plural = "s" if len(cancelled) != 1 else ""
        print(f"cancelled {len(cancelled)} row{plural} (FAILED, error code CANCELLED)")
        return RET_FAIL if refused else RET_OK

    async def bounded() -> int:
        # resolving a row may wait on the gateway: longer than the other commands' bound
        return await asyncio.wait_for(body(), timeout=max(60.0, 4 * cfg.connect_timeout))

    return run_command("cancel", cfg, bounded, bounded=False)
