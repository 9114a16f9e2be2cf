"""What a worker checks before its event loop starts: catalogue, identity and role, wallet, TLS files.

A problem here is one only the operator can fix: the worker exits 78 at once (and is not restarted in a
loop), instead of failing later inside the loop. ``gxsubmit cancel`` uses the same checks to reach the
gateway as an identity's worker would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gxsubmit.catalog import Catalog, CatalogError, load_catalog
from gxsubmit.config import Config
from gxsubmit.fabric import Deadlines, GatewayClient
from gxsubmit.wallet import WalletError, WalletIdentity, load_identity, load_tls_client

__all__ = ["Boot", "ConfigProblem", "boot", "gateway_client"]


class ConfigProblem(Exception):
    """Something only the operator can fix; the worker exits 78 and is not restarted in a loop."""


@dataclass(frozen=True)
class Boot:
    """Everything checked before the event loop starts (so a bad wallet exits 78 at once)."""

    catalog: Catalog
    types: tuple[str, ...]
    role: str
    wallet_identity: WalletIdentity
    tls_root: bytes | None
    client_cert: bytes | None
    #: the client TLS private key: never in a repr (a Boot can end up in a traceback or a debug log)
    client_key: bytes | None = field(repr=False)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigProblem(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def boot(cfg: Config, identity: str) -> Boot:
    """Load the catalogue, the identity (with its required role) and the TLS files."""
    try:
        catalog = load_catalog(cfg.catalog)
    except CatalogError as exc:
        raise ConfigProblem(f"catalogue: {exc}") from None
    role = catalog.identities.get(identity)
    if role is None:
        known = ", ".join(sorted(catalog.identities)) or "none"
        raise ConfigProblem(f"identity {identity!r} is not in the catalogue (known: {known})")
    types = tuple(catalog.types_for(identity))
    if not types:
        raise ConfigProblem(f"no command types are routed to identity {identity!r}")
    try:
        wi = load_identity(cfg.wallet, identity, msp_id=cfg.msp_id, expected_role=role)
    except WalletError as exc:
        raise ConfigProblem(str(exc)) from None
    tls_root = client_cert = client_key = None
    if not cfg.insecure:
        tls_root = _read(cfg.tls_ca_path, "the gateway TLS CA (set --tls-ca, or --insecure for plaintext)")
        if cfg.client_cert is not None and cfg.client_key is not None:
            client_cert = _read(cfg.client_cert, "the client TLS certificate")
            client_key = _read(cfg.client_key, "the client TLS key")
        else:
            try:
                pair = load_tls_client(cfg.wallet)
            except WalletError as exc:
                raise ConfigProblem(str(exc)) from None
            if pair is not None:
                client_cert, client_key = pair
    return Boot(catalog, types, role, wi, tls_root, client_cert, client_key)



def gateway_client(cfg: Config, b: Boot) -> GatewayClient:
    """The Gateway client of this process (the channel connects lazily; ``Worker`` waits for it)."""
    try:
        return GatewayClient(
            target=cfg.gateway, tls_root=b.tls_root, server_name=cfg.server_name,
            client_cert=b.client_cert, client_key=b.client_key,
            deadlines=Deadlines(evaluate=cfg.evaluate_timeout, endorse=cfg.endorse_timeout,
                                submit=cfg.submit_timeout, commit_status=cfg.commit_timeout),
            keepalive_s=cfg.keepalive)
    except ValueError as exc:
        raise ConfigProblem(f"gateway client: {exc}") from None

