"""``gxsubmit check``: preflight of configuration, catalogue, wallet, database, gateway and, when
commits are learnt from the peer's block stream, whether each identity may open that stream.

One line per item (``ok  ...`` or ``FAIL ...``) so that an operator sees every problem at once, not
only the first; the exit status is non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cryptography import x509

from gxsubmit.config import Config
from gxsubmit.exitcodes import RET_CONFIG, RET_FAIL, RET_OK, RET_UNAVAILABLE
from gxsubmit.wallet import WalletError, WalletIdentity, load_identity, load_tls_ca, load_tls_client

if TYPE_CHECKING:
    from gxsubmit.fabric.client import GatewayClient
    from gxsubmit.outbox import OutboxStore

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-database", action="store_true", help="do not connect to the database")
    parser.add_argument("--skip-gateway", action="store_true", help="do not connect to the gateway")


class _Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed: set[str] = set()

    def ok(self, text: str) -> None:
        print(f"ok   {text}", file=self.out, flush=True)

    def fail(self, kind: str, text: str) -> None:
        self.failed.add(kind)
        print(f"FAIL {text}", file=self.out, flush=True)


def _day(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d")


def run(cfg: Config, args: argparse.Namespace | None = None, *, out: TextIO | None = None) -> int:
    """Check everything; exit 0, 78 (configuration/wallet/catalogue) or 69 (database/gateway down)."""
    rep = _Report(out or sys.stdout)
    rep.ok(
        f"config gateway={cfg.gateway} wallet={cfg.wallet} msp={cfg.msp_id}"
        + (" (plaintext gRPC: --insecure)" if cfg.insecure else "")
    )
    identities, channels = _check_catalog(cfg, rep)
    now = datetime.now(UTC)
    loaded: list[WalletIdentity] = []
    for name, role in identities.items():
        try:
            wi = load_identity(cfg.wallet, name, msp_id=cfg.msp_id, expected_role=role, now=now)
        except WalletError as exc:
            rep.fail("config", f"wallet {name}: {exc}")
            continue
        loaded.append(wi)
        days = (wi.not_after - now).days
        warn = f" WARNING: expires in {days} days" if days < 30 else ""
        rep.ok(f"wallet {name} ({wi.role or 'no role'}, expires {_day(wi.not_after)}){warn}")
    tls_root = _check_tls(cfg, rep)
    skip_db = bool(getattr(args, "skip_database", False))
    skip_gw = bool(getattr(args, "skip_gateway", False))
    if not skip_db:
        asyncio.run(_check_database(cfg, rep))
    if not skip_gw and (cfg.insecure or tls_root is not None):
        asyncio.run(_check_gateway(cfg, rep, tls_root, loaded, channels))
    if "config" in rep.failed:
        return RET_CONFIG
    if "unavailable" in rep.failed:
        return RET_UNAVAILABLE
    return RET_FAIL if rep.failed else RET_OK


def _check_catalog(cfg: Config, rep: _Report) -> tuple[dict[str, str | None], dict[str, list[str]]]:
    """(identity -> role, identity -> the channels its commands go to) of the identities to run."""
    try:
        from gxsubmit.catalog import CatalogError, load_catalog
    except ImportError as exc:  # pragma: no cover - catalogue module missing from a broken install
        rep.fail("config", f"catalogue: cannot import gxsubmit.catalog ({exc})")
        return {}, {}
    try:
        catalog = load_catalog(cfg.catalog)
    except (CatalogError, OSError) as exc:
        rep.fail("config", f"catalogue {cfg.catalog or '(default)'}: {exc}")
        return {}, {}
    names = list(cfg.identities) if cfg.identities else list(catalog.identities)
    unknown = [n for n in names if n not in catalog.identities]
    for n in unknown:
        rep.fail("config", f"identity {n}: not declared in the catalogue {catalog.source}")
    rep.ok(
        f"catalogue {catalog.source}: {len(catalog.all_types())} command types, identities {', '.join(names)}"
    )
    known = [n for n in names if n in catalog.identities]
    return (
        {n: catalog.identities[n] for n in known},
        {n: [cfg.channel] if cfg.channel else catalog.channels_for(n) for n in known},
    )


def _check_tls(cfg: Config, rep: _Report) -> bytes | None:
    if cfg.insecure:
        return None
    path = cfg.tls_ca_path
    try:
        data = load_tls_ca(path.parent) if path.name == "tlsca-cert" else _read_pem(path)
    except WalletError as exc:
        rep.fail("config", f"tls ca: {exc}")
        return None
    if data is None:
        rep.fail("config", f"tls ca: {path}: file not found (give --tls-ca, or --insecure for plaintext)")
        return None
    rep.ok(f"tls ca {path}" + (f" (server name {cfg.server_name})" if cfg.server_name else ""))
    return data


def _read_pem(p: Path) -> bytes | None:
    if not p.exists():
        return None
    try:
        data = p.read_bytes()
        x509.load_pem_x509_certificates(data)
    except (OSError, ValueError):
        raise WalletError(p, "bad PEM certificate (cannot parse)") from None
    return data


async def _check_database(cfg: Config, rep: _Report) -> None:
    if not cfg.database_url:
        rep.fail("config", "database: no database URL (GXSUBMIT_DATABASE_URL or DATABASE_URL)")
        return
    try:
        from gxsubmit.outbox import OutboxStore, SchemaNotMigrated
    except ImportError as exc:
        rep.fail("config", f"database: cannot import gxsubmit.outbox ({exc})")
        return
    try:
        store = await OutboxStore.connect(
            cfg.database_conninfo, schema=cfg.schema, worker_id="check", connect_timeout=cfg.connect_timeout
        )
    except SchemaNotMigrated as exc:
        rep.fail("config", f"database: {exc}")
        return
    except Exception as exc:  # psycopg.OperationalError and friends: report, do not crash
        from gxsubmit.dbroute import ca_setting, tls_problem

        problem = tls_problem(exc, url_setting="GXSUBMIT_DATABASE_URL", ca_setting=ca_setting(cfg))
        if problem is not None:
            rep.fail("config", f"database: {problem}")
        else:
            rep.fail("unavailable", f"database: cannot connect: {_one_line(exc)}")
        return
    try:
        await _check_route(cfg, rep, store)
        stats = await store.stats()
    except Exception as exc:
        if type(exc).__name__ == "UndefinedTable":
            rep.fail(
                "config", f"database: table {cfg.schema}.outbox_commands is missing (run gxsubmit migrate)"
            )
        else:
            rep.fail("unavailable", f"database: query failed: {_one_line(exc)}")
        return
    finally:
        await store.close()
    pending = getattr(stats, "by_status", {}).get("PENDING", 0)
    rep.ok(f"database schema {cfg.schema}: outbox_commands readable ({pending} pending)")


async def _check_route(cfg: Config, rep: _Report, store: OutboxStore) -> None:
    """Pooler or not (and its mode), TLS, and whether NOTIFY reaches a LISTEN connection."""
    from gxsubmit.dbroute import pool_mode
    from gxsubmit.outbox import OutboxListener
    from gxsubmit.wakeups import PROBE_TIMEOUT_S

    tls = "TLS" if store.tls else "no TLS"
    if not store.pooled:
        rep.ok(f"database route: direct ({tls})")
    else:
        try:
            info = await pool_mode(cfg.database_conninfo, connect_timeout=cfg.connect_timeout)
        except Exception as exc:
            rep.ok(f"database route: through a pooler or proxy ({tls}); pool mode unknown: {_one_line(exc)}")
        else:
            text = (f"database route: through a pooler or proxy ({tls}), pool mode {info.mode} "
                    f"({info.detail})")
            if info.mode == "statement":
                rep.fail("config", text + ": gxsubmit needs transaction or session pooling")
            else:
                rep.ok(text)
    which = "GXSUBMIT_LISTEN_URL" if cfg.listen_url else "the database URL"
    try:
        notifier = await OutboxListener.connect(cfg.listen_conninfo, connect_timeout=cfg.connect_timeout)
    except Exception as exc:
        rep.fail("unavailable",
                 f"notifications: cannot open the LISTEN connection ({which}): {_one_line(exc)}")
        return
    try:
        arrived, _ = await notifier.probe(store.notify_probe, PROBE_TIMEOUT_S)
    finally:
        await notifier.close()
    if arrived:
        rep.ok(f"notifications: a NOTIFY reaches the LISTEN connection ({which})")
    else:
        every = min(cfg.poll_interval, cfg.pooled_poll_interval)
        rep.ok(f"notifications: WARNING: a NOTIFY does not reach the LISTEN connection ({which}; a "
               f"transaction pooler?): workers poll every {every:g}s; set "
               "GXSUBMIT_LISTEN_URL to a direct connection for prompt wake-ups")


async def _check_gateway(
    cfg: Config,
    rep: _Report,
    tls_root: bytes | None,
    identities: list[WalletIdentity],
    channels: dict[str, list[str]],
) -> None:
    from gxsubmit.fabric.client import GatewayClient
    from gxsubmit.fabric.errors import FabricError

    cert = key = None
    if cfg.client_cert is not None and cfg.client_key is not None:
        try:
            cert, key = cfg.client_cert.read_bytes(), cfg.client_key.read_bytes()
        except OSError as exc:
            rep.fail("config", f"gateway: client TLS pair: {exc.filename}: {exc.strerror}")
            return
    elif tls_root is not None:
        try:  # as the worker does: the wallet's client-tls-cert/-key when no pair is configured
            pair = load_tls_client(cfg.wallet)
        except WalletError as exc:
            rep.fail("config", f"gateway: client TLS pair: {exc}")
            return
        if pair is not None:
            cert, key = pair
    client = GatewayClient(
        target=cfg.gateway, tls_root=tls_root, server_name=cfg.server_name, client_cert=cert, client_key=key
    )
    try:
        try:
            await client.wait_ready(cfg.connect_timeout)
        except FabricError as exc:
            rep.fail("unavailable", f"gateway {cfg.gateway}: {exc}")
            return
        rep.ok(f"gateway {cfg.gateway} reachable ({'TLS' if tls_root is not None else 'plaintext'})")
        for wi in identities:
            for channel in channels.get(wi.name, []):
                if cfg.commit_events:
                    await _check_commit_stream(cfg, rep, client, wi, channel, cert)
                await _check_ledger_lookup(rep, client, wi, channel)
    finally:
        await client.close()


async def _check_commit_stream(
    cfg: Config, rep: _Report, client: GatewayClient, wi: WalletIdentity, channel: str, cert: bytes | None
) -> None:
    """Open the filtered-block stream as the worker will and wait for its first block. A refusal is a
    warning, not a failure: the worker then asks CommitStatus per transaction (slower, still correct)."""
    from gxsubmit.fabric.commits import tls_cert_hash
    from gxsubmit.fabric.errors import FabricError
    from gxsubmit.fabric.identity import SigningIdentity

    stream = client.filtered_blocks(
        SigningIdentity.from_wallet(wi),
        channel=channel,
        start_block=None,
        tls_cert_hash=tls_cert_hash(cert) if cert else None,
    )
    try:
        block = await asyncio.wait_for(anext(stream), cfg.connect_timeout)
    except (FabricError, TimeoutError, StopAsyncIteration) as exc:
        why = f"no block within {cfg.connect_timeout:g}s" if isinstance(exc, TimeoutError) else _one_line(exc)
        rep.ok(
            f"commit stream as {wi.name} on {channel}: WARNING: {why}; its worker will ask CommitStatus "
            "per transaction (GXSUBMIT_COMMIT_EVENTS=false skips the stream)"
        )
        return
    finally:
        await stream.aclose()
    rep.ok(f"commit stream as {wi.name} on {channel}: newest block {block.number}")


async def _check_ledger_lookup(rep: _Report, client: GatewayClient, wi: WalletIdentity, channel: str) -> None:
    """Ask the ledger about a tx id that cannot exist, as the worker asks about a lost tx id of an expired
    certificate (docs/design.md#rotated-certificates). A refusal is a warning: only that rare case then
    waits for an operator."""
    import hashlib
    import os

    from gxsubmit.fabric.errors import FabricError
    from gxsubmit.fabric.identity import SigningIdentity

    tx_id = hashlib.sha256(os.urandom(32)).hexdigest()
    try:
        known = await client.transaction_known(SigningIdentity.from_wallet(wi), channel=channel, tx_id=tx_id)
    except FabricError as exc:
        rep.ok(
            f"ledger lookup as {wi.name} on {channel}: WARNING: {_one_line(exc)}; after a certificate "
            "rotation and a restart, a command whose old transaction the ledger lacks waits for an operator"
        )
        return
    if known:  # a random tx id found: the peer did not answer the question asked
        rep.ok(f"ledger lookup as {wi.name} on {channel}: WARNING: qscc claims to hold a random tx id")
        return
    rep.ok(f"ledger lookup as {wi.name} on {channel}: ok (qscc GetTransactionByID)")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
