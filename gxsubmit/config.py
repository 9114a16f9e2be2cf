"""The one configuration object, built once from flags and environment.

Precedence, highest first: command-line flag, ``GXSUBMIT_*`` variable, the original
worker's variable name (``DATABASE_URL``, ``POLL_INTERVAL`` ...), built-in default.
No other module reads ``os.environ``: workers get their configuration from the
supervisor through :meth:`Config.to_env`, so every process sees the same values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gxsubmit.secrets import redact

__all__ = ["SETTINGS", "Config", "ConfigError", "Setting", "add_config_arguments", "conninfo", "load_config"]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is one line naming it."""


# --- value parsers: each takes the raw text and returns the value or raises ValueError(expected form)


def _str(raw: str) -> str:
    if not raw.strip():
        raise ValueError("a non-empty string")
    return raw.strip()


def _opt_str(raw: str) -> str | None:
    return raw.strip() or None


def _path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("a file or directory path")
    return Path(raw.strip())


def _opt_path(raw: str) -> Path | None:
    return Path(raw.strip()) if raw.strip() else None


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("one of true/false/1/0/yes/no")


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"an integer from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"an integer from {lo} to {hi}")
        return value

    return parse


def _seconds(lo: float = 0.0, hi: float = 86400.0, *, positive: bool = True) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        text = raw.strip().lower()
        scale = 1.0
        if text.endswith("ms"):
            text, scale = text[:-2], 0.001
        elif text.endswith("s"):
            text = text[:-1]
        try:
            value = float(text) * scale
        except ValueError:
            raise ValueError(f"a number of seconds from {lo:g} to {hi:g} (e.g. 2.5, 250ms)") from None
        if value != value or not lo <= value <= hi or (positive and value <= 0):
            raise ValueError(f"a number of seconds from {lo:g} to {hi:g} (e.g. 2.5, 250ms)")
        return value

    return parse


def _millis_as_seconds(inner: Callable[[str], float]) -> Callable[[str], float]:
    """The original worker's intervals were integers in milliseconds."""

    def parse(raw: str) -> float:
        try:
            ms = float(raw.strip())
        except ValueError:
            raise ValueError("an integer number of milliseconds") from None
        return inner(repr(ms / 1000.0))

    return parse


_BYTE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def _byte_size(lo: int, hi: int) -> Callable[[str], int]:
    """A size in bytes: 1048576, 512KiB, 1MiB, 2MB."""
    expected = f"a size in bytes from {lo} to {hi} (e.g. 524288, 512KiB, 1MiB)"

    def parse(raw: str) -> int:
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", raw)
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _BYTE_UNITS or len(m.group(1)) > 12:
            raise ValueError(expected)
        value = int(m.group(1)) * _BYTE_UNITS[unit]
        if not lo <= value <= hi:
            raise ValueError(expected)
        return value

    return parse


def _host_port(raw: str) -> str:
    text = raw.strip()
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(\d{1,5})", text)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError("HOST:PORT (e.g. peer0.org1.example.com:7051)")
    return text


def _identifier(raw: str) -> str:
    text = raw.strip()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise ValueError("a lower-case SQL identifier (letters, digits, underscore)")
    return text


def _name_list(raw: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in raw.split(",") if x.strip())
    if not items:
        raise ValueError("a comma-separated list of names")
    return items


def _opt_name_list(raw: str) -> tuple[str, ...] | None:
    return _name_list(raw) if raw.strip() else None


def _log_level(raw: str) -> str:
    low = raw.strip().lower()
    if low not in ("debug", "info", "warning", "error"):
        raise ValueError("one of debug, info, warning, error")
    return low


def _database_url(raw: str) -> str:
    text = raw.strip()
    if not text:
        return ""
    if not (text.startswith(("postgresql://", "postgres://")) or "=" in text):
        raise ValueError("a libpq URL (postgresql://user@host:5432/db) or key=value string")
    return text


def _path_safe(name: str) -> str:
    """A worker id as one path component (ids are host or pod names, but any text is allowed)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def _default_runtime_dir() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"gxsubmit-{os.getuid()}"


@dataclass(frozen=True)
class Setting:
    """One setting: its flag, environment names and parser."""

    name: str
    parse: Callable[[str], Any]
    default: Callable[[], Any]
    help: str
    legacy_env: tuple[tuple[str, Callable[[str], Any]], ...] = ()
    flag_is_switch: bool = False

    @property
    def env(self) -> str:
        return "GXSUBMIT_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _const(value: Any) -> Callable[[], Any]:
    return lambda: value


_S = Setting
SETTINGS: tuple[Setting, ...] = (
    _S("database_url", _database_url, _const(""), "PostgreSQL URL (libpq; several hosts and "
       "target_session_attrs=read-write are fine)", (("DATABASE_URL", _database_url),)),
    _S("database_url_file", _opt_path, _const(None), "file holding the PostgreSQL URL (keeps the password "
       "off command lines and out of the environment; not together with the URL itself)"),
    _S("schema", _identifier, _const("public"), "schema holding outbox_commands"),
    _S("listen_url", _database_url, _const(""), "PostgreSQL URL for LISTEN only, not through a transaction "
       "pooler (default: the database URL; without one behind a pooler, workers poll every "
       "pooled_poll_interval)"),
    _S("listen_url_file", _opt_path, _const(None), "file holding the LISTEN URL (as database_url_file; not "
       "together with the URL itself)"),
    _S("database_ca", _opt_path, _const(None), "CA file for TLS to PostgreSQL (sslrootcert; sslmode "
       "defaults to verify-full when given)"),
    _S("gateway", _host_port, _const("localhost:7051"), "Fabric Gateway peer HOST:PORT",
       (("FABRIC_PEER_ENDPOINT", _host_port),)),
    _S("wallet", _path, _const(Path("./fabric-wallet")), "wallet directory (ca-cert, <identity>-cert/-key, "
       "tlsca-cert)", (("FABRIC_WALLET_PATH", _path),)),
    _S("catalog", _opt_path, _const(None), "command catalogue TOML file (default: the GX catalogue)"),
    _S("identities", _opt_name_list, _const(None), "comma-separated identities to run (default: all in "
       "the catalogue)"),
    _S("tls_ca", _opt_path, _const(None), "TLS CA bundle for the gateway (default: <wallet>/tlsca-cert)",
       (("FABRIC_PEER_TLS_CA_CERT_PATH", _opt_path),)),
    _S("server_name", _opt_str, _const(None), "TLS server-name override",
       (("FABRIC_TLS_SERVER_NAME_OVERRIDE", _opt_str),)),
    _S("client_cert", _opt_path, _const(None), "client TLS certificate (mutual TLS)"),
    _S("client_key", _opt_path, _const(None), "client TLS key (mutual TLS)"),
    _S("insecure", _bool, _const(False), "plaintext gRPC (local work only)", flag_is_switch=True),
    _S("msp_id", _str, _const("Org1MSP"), "MSP id of the identities", (("FABRIC_MSP_ID", _str),)),
    _S("endorsing_orgs", _name_list, _const(("Org1MSP", "Org2MSP")), "comma-separated endorsing MSP ids"),
    _S("channel", _opt_str, _const(None), "override the catalogue's channel",
       (("FABRIC_CHANNEL_NAME", _opt_str),)),
    _S("chaincode", _opt_str, _const(None), "override the catalogue's chaincode",
       (("FABRIC_CHAINCODE_NAME", _opt_str),)),
    _S("metrics_host", _str, _const("0.0.0.0"), "address for /metrics, /healthz, /readyz, /status"),
    _S("metrics_port", _int_range(1, 65535), _const(9090), "port for /metrics, /healthz, /readyz, /status",
       (("METRICS_PORT", _int_range(1, 65535)),)),
    _S("worker_id", _str, socket.gethostname, "this replica's name in locked_by (default: host name)",
       (("WORKER_ID", _str),)),
    _S("node_name", _str, socket.gethostname, "the machine this replica runs on, shown by gxsubmit "
       "fleet/verify (Kubernetes: spec.nodeName through the downward API; default: host name)"),
    _S("fleet_interval", _seconds(0.2, 600), _const(10.0), "how often the supervisor records its replica "
       "in the database (gxsubmit fleet); it counts as gone after 3 intervals without one"),
    _S("unroutable_grace", _seconds(0, 86400, positive=False), _const(120.0),
       "a PENDING row is dead-lettered UNROUTABLE only after no live replica has routed its type for "
       "this long (rolling updates that add or remove a type)"),
    _S("batch_size", _int_range(1, 10000), _const(256), "most rows claimed per statement",
       (("BATCH_SIZE", _int_range(1, 10000)),)),
    _S("max_in_flight", _int_range(1, 100000), _const(256), "most commands in flight per identity"),
    _S("poll_interval", _seconds(0.01, 3600), _const(30.0),
       "fallback poll when no NOTIFY arrives (rows a worker retries later wake it at their due time)",
       (("POLL_INTERVAL", _millis_as_seconds(_seconds(0.01, 3600))),)),
    _S("pooled_poll_interval", _seconds(0.05, 60), _const(1.0),
       "poll interval when a NOTIFY probe shows that notifications do not arrive (LISTEN through a "
       "transaction pooler)"),
    _S("max_attempts", _int_range(1, 1000), _const(10), "attempts before a retryable failure is final",
       (("MAX_RETRIES", _int_range(1, 1000)),)),
    # Limits before the wire (issue 16; docs/operations.md "Limits"): far under an orderer's
    # BatchSize.AbsoluteMaxBytes (99 MB in Fabric's sample channel, often 10 MB or less) and under
    # grpcio's 4 MiB default message cap, which any hop may still use; a GX command is a few hundred bytes.
    # An envelope carries its arguments several times (input, state writes, the chaincode's answer):
    # 100 KB of arguments made a 604 KB envelope at the emulator, so 256 KiB stays near 1.5 MB.
    _S("max_payload_bytes", _byte_size(1024, 64 * 1024**2), _const(512 * 1024),
       "largest payload (its JSON text) a worker decodes; larger rows fail PAYLOAD_TOO_LARGE"),
    _S("max_argument_bytes", _byte_size(1024, 64 * 1024**2), _const(256 * 1024),
       "largest total of one command's chaincode arguments; more fails PAYLOAD_TOO_LARGE"),
    _S("max_proposal_bytes", _byte_size(4096, 64 * 1024**2), _const(320 * 1024),
       "largest signed proposal sent for endorsement; larger fails PAYLOAD_TOO_LARGE"),
    _S("max_worker_crashes", _int_range(2, 1000), _const(3),
       "claims of one row that may end in its worker crashing or being killed as hung before the row "
       "is FAILED (WORKER_CRASH)"),
    _S("in_doubt_limit", _seconds(0, 30 * 86400, positive=False), _const(3600.0),
       "how long a submitted transaction may stay unresolved (no definite ledger answer while the gateway "
       "answers) before its row is FAILED (IN_DOUBT_UNRESOLVED, tx id kept: a requeue resolves it first); "
       "0 = resolve for ever"),
    _S("lease_seconds", _seconds(1, 3600), _const(30.0), "claim lease, renewed while a command is worked on",
       (("LOCK_TIMEOUT", _millis_as_seconds(_seconds(1, 3600))),)),
    _S("backoff_base", _seconds(0.01, 3600), _const(1.0), "first retry delay"),
    _S("backoff_cap", _seconds(0.1, 86400), _const(300.0), "longest retry delay"),
    _S("evaluate_timeout", _seconds(0.1, 600), _const(5.0), "Evaluate deadline"),
    _S("endorse_timeout", _seconds(0.1, 600), _const(15.0), "Endorse deadline"),
    _S("submit_timeout", _seconds(0.1, 600), _const(5.0), "Submit deadline"),
    _S("commit_timeout", _seconds(0.1, 3600), _const(60.0),
       "longest wait for a submitted transaction's commit"),
    _S("commit_events", _bool, _const(True), "learn commits from one filtered-block stream per worker "
       "(the peer's Deliver service); false = one CommitStatus call per transaction"),
    _S("connect_timeout", _seconds(0.1, 600), _const(5.0), "database and gateway connect deadline"),
    _S("db_deadline", _seconds(0.5, 600), _const(8.0), "client-side deadline of one database round trip "
       "(a statement, or the idle probe): past it the connection is dropped, the worker reports the "
       "database unavailable and reconnects"),
    _S("db_keepalive", _seconds(1, 3600), _const(5.0), "TCP keepalive on database connections: first probe "
       "after this idle time, then every third of it; 3 unanswered probes close the link"),
    _S("db_tcp_user_timeout", _seconds(0, 3600, positive=False), _const(10.0), "TCP user timeout on "
       "database connections: data unacknowledged this long closes the link (0 = the kernel's default)"),
    _S("drain_timeout", _seconds(0, 3600, positive=False), _const(25.0),
       "graceful shutdown: time to finish or hand back in-flight work"),
    _S("heartbeat_interval", _seconds(0.05, 60), _const(1.0), "worker status-file refresh"),
    _S("heartbeat_timeout", _seconds(1, 3600), _const(30.0), "a worker silent this long is killed"),
    _S("breaker_threshold", _int_range(1, 10000), _const(5),
       "consecutive gateway failures that open the breaker"),
    _S("breaker_cooldown", _seconds(0.1, 3600), _const(10.0), "breaker open time before a probe"),
    _S("keepalive", _seconds(1, 3600), _const(60.0), "gRPC keepalive ping interval"),
    _S("log_level", _log_level, _const("info"), "debug, info, warning or error",
       (("LOG_LEVEL", _log_level),)),
    _S("runtime_dir", _path, _default_runtime_dir, "worker status files (default: a directory per worker "
       "id under $XDG_RUNTIME_DIR or /tmp, so supervisors of different worker ids can share a host)"),
    _S("multiproc_dir", _opt_path, _const(None), "Prometheus multiprocess directory (default: "
       "$PROMETHEUS_MULTIPROC_DIR or <runtime_dir>/metrics)", (("PROMETHEUS_MULTIPROC_DIR", _opt_path),)),
)
_BY_NAME = {s.name: s for s in SETTINGS}
#: Settings holding a connection string (and so perhaps a password): never echoed, masked in reprs.
_URL_SETTINGS = ("database_url", "listen_url")


def conninfo(url: str, ca: Path | None) -> str:
    """``url`` with the PostgreSQL CA file as ``sslrootcert``; ``sslmode`` defaults to verify-full then.

    Here rather than in :mod:`gxsubmit.dbroute`, which reads a :class:`Config`: the settings own what
    their URLs mean. psycopg is imported on use, so reading the settings (``--help``) does not load it.
    """
    if ca is None or not url:
        return url
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    extra: dict[str, Any] = {"sslrootcert": str(ca)}
    if "sslmode" not in params:
        extra["sslmode"] = "verify-full"
    return make_conninfo(url, **extra)


@dataclass(frozen=True)
class Config:
    """Effective settings of one process (see ``SETTINGS`` for meaning and defaults)."""

    database_url: str = ""
    database_url_file: Path | None = None
    schema: str = "public"
    listen_url: str = ""
    listen_url_file: Path | None = None
    database_ca: Path | None = None
    gateway: str = "localhost:7051"
    wallet: Path = Path("./fabric-wallet")
    catalog: Path | None = None
    identities: tuple[str, ...] | None = None
    tls_ca: Path | None = None
    server_name: str | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    insecure: bool = False
    msp_id: str = "Org1MSP"
    endorsing_orgs: tuple[str, ...] = ("Org1MSP", "Org2MSP")
    channel: str | None = None
    chaincode: str | None = None
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090
    worker_id: str = field(default_factory=socket.gethostname)
    node_name: str = field(default_factory=socket.gethostname)
    fleet_interval: float = 10.0
    unroutable_grace: float = 120.0
    batch_size: int = 256
    max_in_flight: int = 256
    poll_interval: float = 30.0
    pooled_poll_interval: float = 1.0
    max_attempts: int = 10
    max_payload_bytes: int = 512 * 1024
    max_argument_bytes: int = 256 * 1024
    max_proposal_bytes: int = 320 * 1024
    max_worker_crashes: int = 3
    in_doubt_limit: float = 3600.0
    lease_seconds: float = 30.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    evaluate_timeout: float = 5.0
    endorse_timeout: float = 15.0
    submit_timeout: float = 5.0
    commit_timeout: float = 60.0
    commit_events: bool = True
    connect_timeout: float = 5.0
    db_deadline: float = 8.0
    db_keepalive: float = 5.0
    db_tcp_user_timeout: float = 10.0
    drain_timeout: float = 25.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 30.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 10.0
    keepalive: float = 60.0
    log_level: str = "info"
    runtime_dir: Path = field(default_factory=_default_runtime_dir)
    multiproc_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.backoff_cap < self.backoff_base:
            raise ConfigError(
                f"invalid setting GXSUBMIT_BACKOFF_CAP (--backoff-cap)={self.backoff_cap:g}: "
                f"expected at least GXSUBMIT_BACKOFF_BASE ({self.backoff_base:g})"
            )
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError(
                "GXSUBMIT_CLIENT_CERT and GXSUBMIT_CLIENT_KEY must be given together (mutual TLS)"
            )

    def __repr__(self) -> str:
        """The dataclass repr with the URL's password masked (a Config ends up in tracebacks)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _URL_SETTINGS:
            values[name] = redact(values[name])
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in values.items()) + ")"

    @property
    def tls_ca_path(self) -> Path:
        """The TLS CA file actually used: explicit, else the wallet's ``tlsca-cert``."""
        return self.tls_ca if self.tls_ca is not None else self.wallet / "tlsca-cert"

    @property
    def tls_paths(self) -> tuple[Path, Path, Path] | None:
        """The gateway connection's TLS files (CA, client cert, client key), None in plain text.

        The client pair is the explicit one, else the wallet's optional ``client-tls-*`` files.
        A gRPC channel reads them once, so the supervisor watches them (a change restarts workers).
        """
        if self.insecure:
            return None
        if self.client_cert is not None and self.client_key is not None:
            return self.tls_ca_path, self.client_cert, self.client_key
        return self.tls_ca_path, self.wallet / "client-tls-cert", self.wallet / "client-tls-key"

    @property
    def database_conninfo(self) -> str:
        """The database URL with the PostgreSQL CA file applied (what every connection uses)."""
        return conninfo(self.database_url, self.database_ca)

    @property
    def listen_conninfo(self) -> str:
        """The LISTEN connection's URL: the direct one if given, else the database URL."""
        return conninfo(self.listen_url or self.database_url, self.database_ca)

    @property
    def metrics_dir(self) -> Path:
        return self.multiproc_dir if self.multiproc_dir is not None else self.runtime_dir / "metrics"

    def require(self, *names: str) -> None:
        """Fail with one line if a setting a command needs was not given."""
        for name in names:
            if not getattr(self, name):
                s = _BY_NAME[name]
                legacy = "".join(f" or {env}" for env, _ in s.legacy_env)
                raise ConfigError(f"missing setting {s.env}{legacy} ({s.flag}): {s.help}")

    def to_env(self) -> dict[str, str]:
        """Every setting as ``GXSUBMIT_*`` variables, for child processes (a URL read from
        ``database_url_file`` or ``listen_url_file`` travels as the file's name: children read it)."""
        out: dict[str, str] = {}
        for s in SETTINGS:
            value = getattr(self, s.name)
            if s.name in _URL_SETTINGS and getattr(self, f"{s.name}_file") is not None:
                value = ""
            if value is None:
                out[s.env] = ""
            elif isinstance(value, bool):
                out[s.env] = "true" if value else "false"
            elif isinstance(value, tuple):
                out[s.env] = ",".join(value)
            elif isinstance(value, float):
                out[s.env] = repr(value)
            else:
                out[s.env] = str(value)
        return out


def add_config_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """Add one flag per setting (or the named subset); each flag's help names its variable."""
    group = parser.add_argument_group("configuration (flag, else environment variable)")
    for s in SETTINGS:
        if only is not None and s.name not in only:
            continue
        envs = s.env + "".join(f", {env}" for env, _ in s.legacy_env)
        if s.flag_is_switch:
            group.add_argument(s.flag, dest=s.name, action="store_const", const="true", default=None,
                               help=f"{s.help} [{envs}]")
        else:
            group.add_argument(s.flag, dest=s.name, default=None, metavar=s.name.upper(),
                               help=f"{s.help} [{envs}]")


def _parse(s: Setting, raw: str, source: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        if s.name in _URL_SETTINGS:  # a malformed URL can hold a password anywhere: never echo it
            raise ConfigError(
                f"invalid setting {source} (value not shown, it may hold a password): expected {exc}"
            ) from None
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        raise ConfigError(f"invalid setting {source}={redact(shown)!r}: expected {exc}") from None


def _read_url(name: str, path: Path) -> str:
    """The URL of setting ``name`` in ``path`` (surrounding whitespace and a trailing newline dropped)."""
    source = f"{_BY_NAME[name + '_file'].env}={str(path)!r}"
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"invalid setting {source}: cannot read it ({why})") from None
    url = _parse(_BY_NAME[name], raw, source, _database_url)
    if not url:
        raise ConfigError(f"invalid setting {source}: the file is empty")
    return str(url)


def load_config(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Config:
    """Build the frozen :class:`Config`; raise :class:`ConfigError` with one line on a bad value."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    defaulted_runtime = False
    for s in SETTINGS:
        raw_flag = getattr(args, s.name, None) if args is not None else None
        if s.name in overrides:
            values[s.name] = overrides[s.name]
        elif raw_flag is not None:
            values[s.name] = _parse(s, str(raw_flag), f"{s.flag}", s.parse)
        elif s.env in env:
            values[s.name] = _parse(s, env[s.env], s.env, s.parse)
        else:
            for legacy, parse in s.legacy_env:
                if legacy in env:
                    values[s.name] = _parse(s, env[legacy], legacy, parse)
                    break
            else:
                values[s.name] = s.default()
                if s.name == "runtime_dir":
                    defaulted_runtime = True
    if defaulted_runtime and "worker_id" in values:
        # One directory per worker id: two supervisors of different worker ids on one host (two systemd
        # instances, pods sharing a hostPath) start without choosing directories; the same id still
        # meets the other's lock.
        values["runtime_dir"] = values["runtime_dir"] / _path_safe(str(values["worker_id"]))
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    for name in _URL_SETTINGS:
        path = values.get(f"{name}_file")
        if path is None or name in overrides:
            continue
        if values[name]:
            s = _BY_NAME[name]
            also = "".join(f" or {env}" for env, _ in s.legacy_env)
            twin = _BY_NAME[name + "_file"].env
            raise ConfigError(f"{twin} and {s.env} ({s.flag}{also}): give one, not both")
        values[name] = _read_url(name, path)
    return Config(**values)
