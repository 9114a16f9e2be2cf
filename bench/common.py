"""Shared machinery of the benchmark harness: database, emulator and supervisor processes, load feeding,
OS accounting, statistics and result formatting.

Everything here drives gxsubmit from the outside, as an operator would: the emulator and the supervisor
run as subprocesses (so their CPU is accounted separately from the harness), configuration goes through
``gxsubmit.config.Config(...).to_env()``, and results come from the outbox table and OS accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gxsubmit import stack

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
MACHINE_PG = "postgresql://postgres@127.0.0.1:5432/test"

# --------------------------------------------------------------------------- statistics and formatting


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default).

    None for an empty sample: a missing number must not look like a measured zero.
    """
    if not values:
        return None
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside 0..100")
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    frac = pos - lo
    return float(data[lo] + (data[hi] - data[lo]) * frac)


def fmt_num(value: float | int | None, digits: int = 3) -> str:
    """Human-readable number with about ``digits`` significant digits; '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return "-"
    v = float(value)
    if v == 0:
        return "0"
    mag = abs(v)
    if mag >= 1000:
        return f"{v:,.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(mag)))
    return f"{v:.{decimals}f}"


#: Columns of the results table: (json key, header, digits)
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("commands_per_s", "cmd/s", 4),
    ("p50_ms", "p50 ms", 3),
    ("p95_ms", "p95 ms", 3),
    ("p99_ms", "p99 ms", 3),
    ("gxsubmit_cpu_ms_per_command", "gx cpu ms/cmd", 3),
    ("emulator_cpu_ms_per_command", "emu cpu ms/cmd", 3),
    ("db_queries_per_command", "db q/cmd", 3),
    ("peak_rss_mb", "rss MB", 3),
)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table, left-aligned first two columns, right-aligned numbers."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def result_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """One table row per (scenario, configuration); skipped scenarios/configs get their reason."""
    rows: list[list[str]] = []
    for name, scen in results.items():
        if scen.get("skipped"):
            rows.append([name, "SKIPPED", *["-"] * len(COLUMNS), str(scen["skipped"])[:80]])
            continue
        for cfg in scen.get("configs", []):
            if cfg.get("skipped"):
                rows.append(
                    [
                        name,
                        str(cfg.get("config", "")),
                        *["-"] * len(COLUMNS),
                        "skipped: " + str(cfg["skipped"])[:70],
                    ]
                )
                continue
            cells = [fmt_num(cfg.get(key), digits) for key, _, digits in COLUMNS]
            rows.append([name, str(cfg.get("config", "")), *cells, str(cfg.get("note", ""))[:90]])
    return rows


def render_results(results: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]) -> str:
    headers = ["scenario", "config", *(h for _, h, _ in COLUMNS), "note"]
    text = format_table(headers, result_rows(results))
    if targets:
        trows = [[t["verdict"], t["name"], t["measured"], t["target"]] for t in targets]
        text += "\n\n" + format_table(["verdict", "target", "measured", "wanted"], trows)
    return text


# --------------------------------------------------------------------------- progress


class Progress:
    """At most one status line per second on stderr while a scenario runs."""

    def __init__(self, label: str, interval: float = 1.0) -> None:
        self.label = label
        self.interval = interval
        self._last = 0.0
        self._t0 = time.monotonic()

    def tick(self, text: str | Callable[[], str], force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            msg = text() if callable(text) else text
            print(f"[{now - self._t0:6.1f}s] {self.label}: {msg}", file=sys.stderr, flush=True)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- OS accounting


def proc_tree(pid: int) -> list[int]:
    """The pid and all its live descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """user+system CPU seconds of each live pid (own time only; children are listed separately)."""
    import psutil

    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU spent between two samples; a process born in between counts from zero."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set (VmHWM) of one process, MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- database


def _replace_dbname(url: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


class BenchDB:
    """A database of the harness's own: a fresh database (so that per-database counters are ours alone)
    on the machine's server or an embedded one, holding a fresh schema per configuration. Dropped at close.
    """

    def __init__(self, workdir: Path, mode: str = "auto") -> None:
        self.workdir = workdir
        self.mode = mode
        self.base_url = ""
        self.url = ""
        self.dbname = ""
        self.embedded: Any = None
        self.server = ""
        self.server_version = ""
        self.counter_method = ""
        self.own_database = False
        self._base: Any = None
        self._schemas: list[str] = []

    def open(self) -> None:
        import psycopg

        env_url = os.environ.get("GXSUBMIT_BENCH_DATABASE_URL", "")
        candidates: list[tuple[str, str]] = []
        if self.mode in ("auto", "machine"):
            if env_url:
                candidates.append(("GXSUBMIT_BENCH_DATABASE_URL", env_url))
            candidates.append(("machine 127.0.0.1:5432/test", MACHINE_PG))
        for label, url in candidates:
            try:
                conn = psycopg.connect(url, autocommit=True, connect_timeout=2)
            except psycopg.Error as exc:
                say(f"bench: database {label} does not answer ({type(exc).__name__}); trying the next")
                continue
            self.base_url, self.server, self._base = url, label, conn
            break
        if self._base is None:
            if self.mode == "machine":
                raise RuntimeError("no PostgreSQL answers at GXSUBMIT_BENCH_DATABASE_URL or 127.0.0.1:5432")
            from gxsubmit.pgembed import EmbeddedPostgres

            say("bench: starting an embedded PostgreSQL (pg_stat_statements preloaded)")
            self.embedded = EmbeddedPostgres(
                self.workdir / "pgdata",
                settings={
                    "shared_preload_libraries": "pg_stat_statements",
                    "max_connections": "200",
                    "fsync": "on",
                    "synchronous_commit": "on",
                },
            )
            self.embedded.start()
            self.base_url, self.server = self.embedded.url, "embedded"
            self._base = psycopg.connect(self.base_url, autocommit=True, connect_timeout=5)
        self.server_version = str(self._base.execute("SHOW server_version").fetchone()[0])
        self.dbname = "gxbench_" + secrets.token_hex(4)
        try:
            self._base.execute(f'CREATE DATABASE "{self.dbname}"')
            self.own_database = True
            self.url = _replace_dbname(self.base_url, self.dbname)
        except psycopg.Error as exc:
            say(f"bench: cannot create a database ({exc}); using schemas in the given database")
            self.dbname = str(self._base.execute("SELECT current_database()").fetchone()[0])
            self.url = self.base_url
        preload = str(self._base.execute("SHOW shared_preload_libraries").fetchone()[0])
        if "pg_stat_statements" in preload:
            with psycopg.connect(self.url, autocommit=True) as c:
                c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self._base.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.counter_method = "pg_stat_statements calls (statements) in the bench database"
        else:
            self.counter_method = (
                "pg_stat_database xact_commit+xact_rollback (transactions; "
                "autocommit statements count 1 each)"
                + (" of the bench's own database" if self.own_database else " of a SHARED database: noisy")
            )

    def query_count(self) -> int:
        """Statements (or transactions) executed so far in the bench database."""
        if self.counter_method.startswith("pg_stat_statements"):
            row = self._base.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = %s",
                (self.dbname,),
            ).fetchone()
        else:
            self._base.execute("SELECT pg_stat_clear_snapshot()")
            row = self._base.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (self.dbname,)
            ).fetchone()
        return int(row[0]) if row else 0

    def new_schema(self) -> str:
        """A freshly migrated gxsubmit schema."""
        import psycopg

        from gxsubmit.outbox import migrate

        schema = "gxb_" + secrets.token_hex(4)

        async def go() -> None:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                await migrate(conn, schema)

        asyncio.run(go())
        self._schemas.append(schema)
        return schema

    def new_plain_schema(self) -> str:
        import psycopg

        schema = "gxb_" + secrets.token_hex(4)
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        self._schemas.append(schema)
        return schema

    def drop_schema(self, schema: str) -> None:
        import psycopg

        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if schema in self._schemas:
            self._schemas.remove(schema)

    def close(self) -> None:
        import psycopg

        if self._base is not None:
            if self.own_database:
                with contextlib.suppress(psycopg.Error):
                    self._base.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
            else:
                for schema in list(self._schemas):
                    self.drop_schema(schema)
            self._base.close()
            self._base = None
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                self.embedded.stop()
            self.embedded = None


# --------------------------------------------------------------------------- emulator


@dataclass
class EmulatorSpec:
    block_time: float = 0.1
    block_size: int = 500
    latency: dict[str, tuple[float, float]] = field(default_factory=dict)
    extra: tuple[str, ...] = ()  # more emulator arguments (e.g. --control FILE)

    def describe(self) -> str:
        lat = ",".join(f"{k}={a * 1000:g}-{b * 1000:g}ms" for k, (a, b) in self.latency.items()) or "none"
        return f"block_time={self.block_time:g}s block_size={self.block_size} latency={lat}"


class EmulatorProc:
    """``python -m gxsubmit emulator`` as a subprocess (its CPU is accounted on its own)."""

    def __init__(self, workdir: Path, wallet: Path, spec: EmulatorSpec, name: str = "emulator") -> None:
        self.workdir, self.wallet, self.spec, self.name = workdir, wallet, spec, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        extra = ["--block-time", repr(self.spec.block_time), "--block-size", str(self.spec.block_size)]
        for rpc, (lo, hi) in self.spec.latency.items():
            extra += ["--latency", f"{rpc}={lo:g}:{hi:g}"]
        extra += list(self.spec.extra)
        self.proc, self.port = stack.start_emulator(
            wallet=self.wallet,
            ledger=self.workdir / f"{self.name}-ledger.jsonl",
            ready_file=self.workdir / f"{self.name}.port",
            log=self.workdir / f"{self.name}.log",
            env=child_env(),
            extra=extra,
            cwd=self.workdir,
            new_session=False,
            timeout=timeout,
        )

    def cpu(self) -> dict[int, float]:
        return cpu_seconds([self.proc.pid]) if self.proc else {}

    def stop(self) -> None:
        stop_process(self.proc, 5.0)
        self.proc = None


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The harness's environment minus any GXSUBMIT_* it happens to carry, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GXSUBMIT_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> int | None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL: only the process we started, by its pid."""
    return stack.stop(proc, grace)


# --------------------------------------------------------------------------- supervisor


class SupervisorProc:
    """``python -m gxsubmit supervise`` with its configuration from ``Config(...).to_env()``."""

    def __init__(self, workdir: Path, name: str, **settings: Any) -> None:
        from gxsubmit.config import Config
        from gxsubmit.pgembed import free_port

        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        settings.setdefault("metrics_port", free_port())
        settings.setdefault("metrics_host", "127.0.0.1")
        settings.setdefault("runtime_dir", self.dir / "run")
        settings.setdefault("multiproc_dir", self.dir / "metrics")
        settings.setdefault("worker_id", name)
        settings.setdefault("log_level", "warning")
        settings.setdefault("drain_timeout", 1.0)  # stops come after the measurement: don't wait on them
        self.cfg = Config(**settings)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        #: own session / process group, so the soak can SIGKILL the supervisor with its workers
        self.new_session = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.cfg.metrics_port}"

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.proc = stack.spawn(stack.supervise_argv(), env=child_env(self.cfg.to_env()),
                                log=self.dir / "supervisor.log", cwd=self.dir, new_session=self.new_session)

    def http(self, path: str, timeout: float = 1.0) -> tuple[int, bytes]:
        return stack.http_get(self.cfg.metrics_port, path, timeout=timeout)

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.01) -> float:
        """Seconds from start to the first /readyz 200."""
        assert self.proc is not None
        try:
            stack.wait_ready(self.proc, self.cfg.metrics_port, log=self.dir / "supervisor.log",
                             timeout=timeout, interval=interval)
        except stack.StackError as exc:
            raise RuntimeError(f"{exc}; /readyz={self.http('/readyz')}\n{self.log_tail()}") from None
        return time.monotonic() - self.started_at

    def log_tail(self, n: int = 15) -> str:
        path = self.dir / "supervisor.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def pids(self) -> list[int]:
        return proc_tree(self.proc.pid) if self.proc else []

    def cpu(self) -> dict[int, float]:
        return cpu_seconds(self.pids())

    def peak_rss(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for pid in self.pids():
            v = peak_rss_mb(pid)
            if v is not None:
                out[pid] = v
        return out

    def worker_pids(self) -> list[int]:
        return [p for p in self.pids() if self.proc and p != self.proc.pid]

    def stop(self) -> int | None:
        rc = stop_process(self.proc, self.cfg.drain_timeout + 10.0)
        self.proc = None
        return rc


# --------------------------------------------------------------------------- workload


#: One command type per identity of the default catalogue, with a payload that never conflicts:
#: every row gets distinct keys, so MVCC conflicts come only from the emulator's fault injection.
#: (identity, command_type, SQL expression building the payload from the integer ``g`` and text ``p``)
WORKLOAD: tuple[tuple[str, str, str], ...] = (
    (
        "org1-partner-api",
        "CREATE_USER",
        "jsonb_build_object('userId', 'u-' || p || '-' || g, 'biometricHash',"
        " md5(p || g::text) || md5(g::text || p),"
        " 'nationality', 'US', 'age', 30)",
    ),
    (
        "org1-admin",
        "PROPOSE_ORGANIZATION",
        "jsonb_build_object('orgId', 'org-' || p || '-' || g, 'orgName', 'Org ' || g, 'orgType', 'BUSINESS',"
        " 'stakeholderIds', jsonb_build_array('s1-' || g, 's2-' || g))",
    ),
    ("org1-super-admin", "APPOINT_ADMIN", "jsonb_build_object('newAdminId', 'a-' || p || '-' || g)"),
)


def workload_for(identities: Sequence[str]) -> list[tuple[str, str]]:
    """(command_type, payload SQL) for the given identities."""
    return [(t, expr) for ident, t, expr in WORKLOAD if ident in identities]


class Feeder:
    """Keeps the number of unfinished rows (PENDING + CLAIMED + SUBMITTED) of each command type near
    ``target / types`` (so ``target`` in all), topping each type up separately.

    A closed system with a fixed population: throughput is the service's capacity and latency is
    service time plus whatever queue wait the population allows (none when ``target`` is the in-flight
    capacity). Per type, because each type is one identity with its own in-flight slots: a total-only
    count lets one identity's queue grow while another starves. Counts its own statements so they can
    be subtracted.
    """

    def __init__(
        self,
        url: str,
        schema: str,
        types: Sequence[tuple[str, str]],
        target: int,
        tick: float = 0.1,
        max_insert: int = 5000,
    ) -> None:
        self.url, self.schema, self.types = url, schema, list(types)
        self.target, self.tick, self.max_insert = target, tick, max_insert
        k = len(self.types)
        self.per_type = {t: target // k + (1 if i < target % k else 0) for i, (t, _) in enumerate(self.types)}
        self.inserted = 0
        self.statements = 0
        self.unfinished = 0
        self.prefix = secrets.token_hex(3)
        self._stop = asyncio.Event()
        self._seq = 0

    async def insert(self, conn: Any, counts: Mapping[str, int]) -> None:
        parts = []
        n = 0
        for ctype, expr in self.types:
            count = min(counts.get(ctype, 0), self.max_insert)
            if count <= 0:
                continue
            start = self._seq + 1
            self._seq += count
            n += count
            parts.append(
                f"SELECT 'bench', '{ctype}', 'bench-{self.prefix}-{ctype}-' || g, ({expr}) "
                f"FROM generate_series({start}, {start + count - 1}) AS g,"
                f" (SELECT '{self.prefix}'::text AS p) AS pp"
            )
        if not parts:
            return
        q = (
            f'INSERT INTO "{self.schema}".outbox_commands (service, command_type, request_id, payload) '
            + " UNION ALL ".join(parts)
        )
        await conn.execute(q)
        self.statements += 1
        self.inserted += n

    async def count_unfinished(self, conn: Any) -> dict[str, int]:
        s = f'"{self.schema}".outbox_commands'
        # Through the two partial indexes (PENDING; CLAIMED/SUBMITTED): one IN over the three statuses
        # scans the whole table, COMMITTED rows included: 3 ms at 26k rows against 0.45, ten times a
        # second, CPU the harness would take from the system under test.
        cur = await conn.execute(
            f"SELECT command_type, count(*) FROM (SELECT command_type FROM {s} WHERE status = 'PENDING'"
            f" UNION ALL SELECT command_type FROM {s} WHERE status IN ('CLAIMED', 'SUBMITTED')) AS u"
            " GROUP BY command_type"
        )
        self.statements += 1
        return {str(t): int(n) for t, n in await cur.fetchall()}

    async def run(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await self.insert(conn, self.per_type)
            while not self._stop.is_set():
                have = await self.count_unfinished(conn)
                self.unfinished = sum(have.values())
                need = {t: want - have.get(t, 0) for t, want in self.per_type.items()}
                # top up a type once it is 5 % short (at least 1 row), so inserts stay bulk
                if any(d >= max(1, self.per_type[t] // 20) for t, d in need.items()):
                    await self.insert(conn, need)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.tick)

    def stop(self) -> None:
        self._stop.set()


class RateFeeder:
    """Inserts rows at a fixed offered rate (an open system), spread evenly over the command types.

    Where :class:`Feeder` measures capacity (a closed population: latency there is population /
    throughput, Little's law), this measures latency: each row's created -> committed time with no
    queue in front of it as long as the rate stays below the capacity. Same counters as Feeder.
    """

    def __init__(self, url: str, schema: str, types: Sequence[tuple[str, str]], rate: float,
                 tick: float = 0.05) -> None:
        self.url, self.schema, self.rate, self.tick = url, schema, rate, tick
        self._inner = Feeder(url, schema, types, target=0)
        self.types = list(types)
        self._next = 0  # round robin over the types
        self.unfinished = 0
        self._stop = asyncio.Event()

    @property
    def inserted(self) -> int:
        return self._inner.inserted

    @property
    def statements(self) -> int:
        return self._inner.statements

    async def run(self) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            t0 = time.monotonic()
            k = len(self.types)
            while not self._stop.is_set():
                due = int(self.rate * (time.monotonic() - t0)) - self._inner.inserted
                if due > 0:
                    counts: dict[str, int] = {}
                    for _ in range(due):
                        t = self.types[self._next % k][0]
                        counts[t] = counts.get(t, 0) + 1
                        self._next += 1
                    await self._inner.insert(conn, counts)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.tick)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Window:
    """Measurements at one instant: DB clock, CPU of each side, query counter."""

    db_ts: Any
    mono: float
    gx_cpu: dict[int, float]
    emu_cpu: dict[int, float]
    queries: int
    harness_statements: int


async def db_now(url: str) -> Any:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        cur = await c.execute("SELECT clock_timestamp()")
        row = await cur.fetchone()
        return row[0]


def block_rate(blocks: Sequence[tuple[int, Any, int]]) -> float | None:
    """Committed rows per second over whole block periods: ``blocks`` is (block, first committed_at,
    rows) per block committed in the window. The rows of every block after the first, over the time
    from the first block's commit to the last's. None with fewer than two blocks.

    Blocks are cut ``block_time`` after their first transaction arrives (as Fabric's BatchTimeout), so
    the period is a little longer than the block time and a fixed window holds a varying number of
    block commits; counting whole periods removes that quantisation.
    """
    if len(blocks) < 2:
        return None
    ordered = sorted(blocks, key=lambda r: r[1])
    span = (ordered[-1][1] - ordered[0][1]).total_seconds()
    return sum(r[2] for r in ordered[1:]) / span if span > 0 else None


def window_stats(
    url: str, schema: str, a: Window, b: Window, *, block_aligned: bool = False
) -> dict[str, Any]:
    """Throughput and created->committed latency of rows committed between two windows' DB timestamps.

    ``block_aligned``: the throughput is :func:`block_rate` (whole block periods inside the window)
    when at least two blocks committed in it: independent of where the window's edges fall between
    block commits (exact for regular blocks; with irregular blocks still unbiased over the window's
    phase, like the plain count, but with less spread); the count / window is kept as
    ``commands_per_s_window``.
    """
    import psycopg

    s = f'"{schema}".outbox_commands'
    with psycopg.connect(url, autocommit=True) as c:
        lat = [
            float(r[0])
            for r in c.execute(
                f"SELECT extract(epoch FROM committed_at - created_at) * 1000 FROM {s}"
                " WHERE status = 'COMMITTED' AND committed_at >= %s AND committed_at < %s",
                (a.db_ts, b.db_ts),
            )
        ]
        blocks = [
            (int(r[0]), r[1], int(r[2]))
            for r in c.execute(
                f"SELECT commit_block, min(committed_at), count(*) FROM {s}"
                " WHERE status = 'COMMITTED' AND committed_at >= %s AND committed_at < %s"
                " AND commit_block IS NOT NULL GROUP BY commit_block",
                (a.db_ts, b.db_ts),
            )
        ]
        failed = c.execute(f"SELECT count(*) FROM {s} WHERE status = 'FAILED'").fetchone()[0]
        codes = c.execute(
            f"SELECT error_code, count(*) FROM {s} WHERE status = 'FAILED' GROUP BY 1 ORDER BY 2 DESC LIMIT 3"
        ).fetchall()
    seconds = (b.db_ts - a.db_ts).total_seconds()
    n = len(lat)
    gx = cpu_delta(a.gx_cpu, b.gx_cpu)
    emu = cpu_delta(a.emu_cpu, b.emu_cpu)
    q = (b.queries - a.queries) - (b.harness_statements - a.harness_statements)
    out: dict[str, Any] = {
        "committed": n,
        "window_s": round(seconds, 3),
        "commands_per_s": n / seconds if seconds > 0 else None,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "gxsubmit_cpu_s": round(gx, 4),
        "emulator_cpu_s": round(emu, 4),
        "gxsubmit_cpu_ms_per_command": gx * 1000 / n if n else None,
        "emulator_cpu_ms_per_command": emu * 1000 / n if n else None,
        "db_queries_per_command": q / n if n else None,
        "db_queries_in_window": q,
        "failed_total": int(failed),
    }
    out["commands_per_s_window"] = out["commands_per_s"]
    out["blocks_in_window"] = len(blocks)
    out["commands_per_s_blocks"] = block_rate(blocks)
    if block_aligned:
        rate = out["commands_per_s_blocks"]
        out["rate_method"] = "whole block periods" if rate is not None else "count / window (< 2 blocks)"
        if rate is not None:
            out["commands_per_s"] = rate
    if codes:
        out["failed_codes"] = {str(k): int(v) for k, v in codes}
    return out


# --------------------------------------------------------------------------- context shared by scenarios


@dataclass
class Context:
    workdir: Path
    quick: bool
    db: BenchDB
    wallet: Path
    emulators: dict[str, EmulatorProc] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # results one scenario offers another

    def emulator(self, key: str, spec: EmulatorSpec) -> EmulatorProc:
        """One emulator per distinct spec, kept for the whole run (shared by scenarios)."""
        emu = self.emulators.get(key)
        if emu is None or emu.proc is None or emu.proc.poll() is not None:
            emu = EmulatorProc(self.workdir, self.wallet, spec, name=f"emulator-{key}")
            emu.start()
            self.emulators[key] = emu
        return emu

    def close(self) -> None:
        for emu in self.emulators.values():
            emu.stop()
        self.emulators.clear()


def make_workdir(keep: bool) -> Path:
    base = BENCH / "results" / "work"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=base))
    os.chmod(path, 0o755)
    return path


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run_load(
    ctx: Context,
    *,
    label: str,
    sups: Sequence[SupervisorProc],
    emu: EmulatorProc,
    schema: str,
    types: Sequence[tuple[str, str]],
    target: int,
    warmup: float,
    duration: float,
    sample_rss: bool = True,
    block_aligned: bool = False,
    rate: float | None = None,
) -> dict[str, Any]:
    """Start the supervisors, feed a load, measure one window, stop. Returns window stats.

    The load is a closed population of ``target`` rows, or with ``rate`` an open arrival of that many
    rows per second (:class:`RateFeeder`; ``target`` is then ignored).
    """
    for s in sups:
        s.start()
    ready = [s.wait_ready(60.0) for s in sups]
    feeder: Feeder | RateFeeder = (Feeder(ctx.db.url, schema, types, target) if rate is None
                                   else RateFeeder(ctx.db.url, schema, types, rate))
    prog = Progress(label)

    def gx_cpu() -> dict[int, float]:
        out: dict[int, float] = {}
        for s in sups:
            out.update(s.cpu())
        return out

    async def drive() -> tuple[Window, Window]:
        task = asyncio.create_task(feeder.run())
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < warmup:
                prog.tick(lambda: f"warm-up, unfinished={feeder.unfinished} inserted={feeder.inserted}")
                await asyncio.sleep(0.1)
                if task.done():
                    task.result()
            a = Window(
                await db_now(ctx.db.url),
                time.monotonic(),
                gx_cpu(),
                emu.cpu(),
                ctx.db.query_count(),
                feeder.statements + 2,
            )
            while time.monotonic() - a.mono < duration:
                done_est = feeder.inserted - feeder.unfinished
                el = time.monotonic() - a.mono
                prog.tick(
                    lambda: (
                        f"measuring {el:4.1f}/{duration:g}s, done~{done_est} unfinished={feeder.unfinished}"  # noqa: B023
                    )
                )
                await asyncio.sleep(0.1)
                if task.done():
                    task.result()
            b = Window(
                await db_now(ctx.db.url),
                time.monotonic(),
                gx_cpu(),
                emu.cpu(),
                ctx.db.query_count(),
                feeder.statements + 2,
            )
            return a, b
        finally:
            feeder.stop()
            await task

    try:
        a, b = asyncio.run(drive())
        rss: dict[int, float] = {}
        if sample_rss:
            for s in sups:
                rss.update(s.peak_rss())
    finally:
        for s in sups:
            s.stop()
    stats = window_stats(ctx.db.url, schema, a, b, block_aligned=block_aligned)
    stats["ready_s"] = [round(r, 3) for r in ready]
    if rss:
        stats["peak_rss_mb"] = round(sum(rss.values()), 1)
        stats["peak_rss_by_process_mb"] = sorted((round(v, 1) for v in rss.values()), reverse=True)
    if rate is None:
        stats["population"] = target
    else:
        stats["offered_per_s"] = rate
    return stats


# --------------------------------------------------------------------------- versions


def versions() -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        import gxsubmit

        out["gxsubmit"] = gxsubmit.__version__
    except Exception as exc:  # pragma: no cover - reported, not fatal
        out["gxsubmit"] = f"unavailable: {exc}"
    from importlib import metadata

    for dist in (
        "psycopg",
        "grpcio",
        "protobuf",
        "uvloop",
        "procrastinate",
        "pgqueuer",
        "psutil",
        "matplotlib",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    node = shutil.which("node")
    if node:
        out["node"] = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    for pkg, rel in (
        ("@hyperledger/fabric-gateway", "tests/node/node_modules/@hyperledger/fabric-gateway"),
        ("graphile-worker", "bench/node/node_modules/graphile-worker"),
    ):
        pj = REPO / rel / "package.json"
        if pj.exists():
            out[pkg] = json.loads(pj.read_text()).get("version")
    return out


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        say(f"bench: {label} took {time.monotonic() - t0:.1f}s")


class OriginalProc:
    """bench/original_worker.py as a subprocess, with the same interface as :class:`SupervisorProc`."""

    def __init__(
        self, workdir: Path, name: str, *, url: str, schema: str, gateway: str, wallet: Path
    ) -> None:
        self.name, self.dir = name, workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = [
            "--url",
            url,
            "--schema",
            schema,
            "--gateway",
            gateway,
            "--wallet",
            str(wallet),
            "--ready-file",
            str(self.dir / "ready"),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        log = open(self.dir / "original.log", "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "original_worker.py"), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            env=child_env(),
        )
        log.close()

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.02) -> float:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"original worker exited with {self.proc.returncode}: "
                    + (self.dir / "original.log").read_text(errors="replace")[-800:]
                )
            if (self.dir / "ready").exists():
                return time.monotonic() - self.started_at
            time.sleep(interval)
        raise RuntimeError("original worker not ready")

    def cpu(self) -> dict[int, float]:
        return cpu_seconds(proc_tree(self.proc.pid)) if self.proc else {}

    def peak_rss(self) -> dict[int, float]:
        v = peak_rss_mb(self.proc.pid) if self.proc else None
        return {self.proc.pid: v} if self.proc and v is not None else {}

    def stop(self) -> int | None:
        rc = stop_process(self.proc, 10.0)
        self.proc = None
        return rc
