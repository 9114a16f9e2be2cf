"""TCP settings of gxsubmit's long-lived database connections, added to the operator's URL.

Why: without them a connection whose peer vanished (a blackholed route, a dead NAT entry, a
partitioned region) is only noticed after the kernel's retransmission limit, about 15 minutes, and
an idle one never. The URL's own ``keepalives*`` or ``tcp_user_timeout`` win, so an operator can
tune one link. The client-side statement deadline (``db_deadline``, applied by
:class:`~gxsubmit.dblink.DbLink`) covers what TCP cannot see: a link whose far end still
acknowledges packets but never answers.
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from gxsubmit.config import Config

__all__ = ["link_conninfo", "tcp_params", "with_tcp"]


def tcp_params(cfg: Config) -> dict[str, str]:
    """libpq parameters for TCP keepalive and the TCP user timeout (milliseconds)."""
    out = {
        "keepalives": "1",
        "keepalives_idle": str(max(1, round(cfg.db_keepalive))),
        "keepalives_interval": str(max(1, round(cfg.db_keepalive / 3))),
        "keepalives_count": "3",
    }
    if cfg.db_tcp_user_timeout > 0:
        out["tcp_user_timeout"] = str(round(cfg.db_tcp_user_timeout * 1000))
    return out


def with_tcp(url: str, cfg: Config) -> str:
    """``url`` with :func:`tcp_params` added where the URL does not set them."""
    if not url:
        return url
    given = conninfo_to_dict(url)
    extra = {k: v for k, v in tcp_params(cfg).items() if k not in given}
    return make_conninfo(url, **extra) if extra else url


def link_conninfo(cfg: Config) -> str:
    """The connection string of the store connections: ``cfg.database_conninfo`` (URL, CA file) with
    the TCP settings."""
    return with_tcp(cfg.database_conninfo, cfg)
