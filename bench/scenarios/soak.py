"""Scenario soak: sustained mixed load through two supervisors under a seeded schedule of faults.

Everything runs on instances of the soak's own (PostgreSQL restarts): an embedded PostgreSQL, the
emulator (restarted on the same ledger file; ``--control`` makes endorsements slow at run time) and two
supervisors, each in its own process group, whose database and gateway links go through a fault
proxy of their own (bench/faultproxy.py). The load: every command type once at the start (the demo's
workload), then every few seconds a round of users, genesis, transfers, order-keyed pairs (freeze ->
unfreeze, mint -> spend) and poison rows (a payload that does not build, an unroutable type, a transfer
above the balance), over a steady closed population of the three conflict-free bulk types.

The fault schedule is drawn from ``--seed`` and printed before it starts; every kind is placed once,
evenly over the phase, then more at random times; faults of different resources overlap. Afterwards
the faults are lifted, the load stops, and the rows get a drain period to finish. Then the ledger
audit (tests/audit.py) and the figures: commands, lost, duplicated, stuck, faults by kind, recovery
time per kind (fault end -> the first commit of the replica it hit, or of any for shared resources),
the oldest PENDING age seen, and throughput inside and outside faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.common import (
    REPO,
    WORKLOAD,
    Context,
    EmulatorProc,
    EmulatorSpec,
    SupervisorProc,
    percentile,
    say,
)
from bench.faultproxy import FaultProxy, upstream_of, via

KINDS: tuple[str, ...] = (
    "kill_worker",
    "kill_supervisor",
    "stop_worker",
    "restart_postgres",
    "terminate_backends",
    "gateway_restart",
    "slow_endorse",
    "db_latency",
    "db_blackhole",
    "gateway_latency",
    "gateway_blackhole",
    "cert_rotation",
)
#: Kinds that hit one replica (its process, or its own link): recovery is that replica's next commit.
PER_REPLICA = frozenset({"kill_worker", "kill_supervisor", "stop_worker", "db_latency", "db_blackhole",
                         "gateway_latency", "gateway_blackhole"})
#: A FAILED row with one of these codes is a command the faults cost: counted as lost. The soak plants no
#: row that crashes its worker, so WORKER_CRASH is the faults' doing too, and so is IN_DOUBT_UNRESOLVED.
LOST_CODES = frozenset({"RETRIES_EXHAUSTED", "INTERNAL_ERROR", "DEADLINE_EXCEEDED", "GATEWAY_UNAVAILABLE",
                        "RESOURCE_EXHAUSTED", "CANCELLED", "BREAKER_OPEN", "WORKER_CRASH",
                        "IN_DOUBT_UNRESOLVED"})
LEASE_S = 5.0
BASE_ENDORSE = [0.005, 0.02]
SLOW_ENDORSE = [1.0, 3.0]
BULK_PER_TYPE = 40
TARGETS = {"lost": 0, "duplicated": 0, "stuck": 0, "every_kind_present": True}


@dataclass
class Fault:
    at: float  # seconds after the fault phase starts
    kind: str
    target: str  # "a" or "b": the replica (or its links) a per-replica fault hits
    duration: float
    started: float | None = None  # wall clock (time.time(), the same clock as PostgreSQL's now())
    ended: float | None = None
    detail: str = ""


def make_schedule(seed: int, seconds: float) -> list[Fault]:
    """Every kind once, evenly spread in a shuffled order, then as many more at random times."""
    rng = random.Random(seed)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    span = max(10.0, seconds - 15.0)
    out: list[Fault] = []
    for i, kind in enumerate(kinds):
        out.append(Fault(round(3.0 + i * span / len(kinds), 1), kind, rng.choice("ab"), _duration(kind, rng)))
    for _ in range(int(len(kinds) * max(0.0, seconds / 60.0 - 1.0))):
        kind = rng.choice(KINDS)
        at = round(rng.uniform(3.0, 3.0 + span), 1)
        out.append(Fault(at, kind, rng.choice("ab"), _duration(kind, rng)))
    return sorted(out, key=lambda f: f.at)


def _duration(kind: str, rng: random.Random) -> float:
    if kind in ("kill_worker", "terminate_backends", "cert_rotation"):
        return 0.0
    if kind == "stop_worker":
        return round(LEASE_S + rng.uniform(2.0, 5.0), 1)  # longer than the lease
    if kind in ("kill_supervisor", "restart_postgres", "gateway_restart"):
        return round(rng.uniform(1.0, 5.0), 1)  # time down before the restart
    return round(rng.uniform(4.0, 14.0), 1)  # latency, blackholes, slow endorsements


def _load_audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gx_tests_audit", REPO / "tests" / "audit.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- workload


def _tagged(value: Any, tag: str, key: str = "") -> Any:
    """The demo's payload with every identifier made unique to ``tag`` (so rounds never collide)."""
    if isinstance(value, dict):
        return {k: _tagged(v, tag, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_tagged(v, tag, key) for v in value]
    if isinstance(value, str) and (value.startswith("demo-") or key in (
            "idempotencyKey", "qsendRequestCode", "remark", "reason", "verificationNotes", "purpose")):
        return f"{tag}-{value}"
    return value


def round_phases(tag: str, full: bool) -> list[list[tuple[str, Any, str | None]]]:
    """One round of commands, phase by phase (a phase starts when the previous one has finished).

    ``full``: every command type of the catalogue (the demo's workload, once); else the types whose
    arguments carry their own identifiers, so that rounds can repeat: users, genesis, transfers, the
    order-keyed pairs and the poison rows."""
    from gxsubmit.catalog import load_catalog
    from gxsubmit.demo import build_workload

    repeatable = {"CREATE_USER", "DISTRIBUTE_GENESIS", "TRANSFER_TOKENS", "Q_SEND_PAY", "MINT",
                  "FREEZE_WALLET", "UNFREEZE_WALLET", "LEGACY_SEND_WELCOME_EMAIL"}
    phases = []
    for phase in build_workload(60 if full else 30, load_catalog(None)):
        cmds = [(t, _tagged(p, tag), f"{tag}-{k}" if k else None) for t, p, k in phase.commands
                if full or t in repeatable]
        if cmds:
            phases.append(cmds)
    return phases


# --------------------------------------------------------------------------- the run


@dataclass
class Soak:
    workdir: Path
    wallet: Path
    seconds: float
    seed: int
    drain_s: float
    pg: Any = None
    url: str = ""
    schema: str = "soak"
    emu: EmulatorProc | None = None
    control: Path = field(default_factory=Path)
    sups: dict[str, SupervisorProc] = field(default_factory=dict)
    dbp: dict[str, FaultProxy] = field(default_factory=dict)
    gwp: dict[str, FaultProxy] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    oldest_pending_s: float = 0.0
    enqueued: int = 0
    stopped: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _locks: dict[str, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))

    # -- set-up / tear-down

    def start(self) -> None:
        import psycopg

        from gxsubmit.outbox import migrate
        from gxsubmit.pgembed import EmbeddedPostgres

        self.pg = EmbeddedPostgres(self.workdir / "soak-pg", settings={"max_connections": "100"})
        self.pg.start()
        self.url = self.pg.url

        async def mig() -> None:
            async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                await migrate(conn, self.schema)

        asyncio.run(mig())
        self.control = self.workdir / "emulator-control.json"
        self._write_control(BASE_ENDORSE)
        spec = EmulatorSpec(block_time=0.5, block_size=500, extra=("--control", str(self.control)))
        self.emu = EmulatorProc(self.workdir, self.wallet, spec, name="soak-emulator")
        self.emu.start()
        for x in "ab":
            self.dbp[x] = FaultProxy(upstream_of(self.url), name=f"db-{x}", seed=self.seed).start()
            self.gwp[x] = FaultProxy(self.emu.target, name=f"gw-{x}", seed=self.seed + 1).start()
            sup = SupervisorProc(
                self.workdir, f"soak-{x}", database_url=via(self.url, self.dbp[x]), schema=self.schema,
                gateway=self.gwp[x].address, wallet=self.wallet, insecure=True, max_in_flight=64,
                lease_seconds=LEASE_S, poll_interval=2.0, backoff_base=0.2, backoff_cap=3.0, max_attempts=30,
                endorse_timeout=5.0, submit_timeout=5.0, commit_timeout=10.0, breaker_cooldown=2.0,
                drain_timeout=2.0, log_level="info")
            sup.new_session = True
            self.sups[x] = sup
            sup.start()
        for sup in self.sups.values():
            sup.wait_ready(90.0)

    def close(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for sup in self.sups.values():
            if sup.proc is not None and sup.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sup.proc.pid, signal.SIGTERM)
                try:
                    sup.proc.wait(15)
                except Exception:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(sup.proc.pid, signal.SIGKILL)
                    sup.proc.wait(5)
            sup.proc = None
        for p in [*self.dbp.values(), *self.gwp.values()]:
            p.stop()
        if self.emu is not None:
            self.emu.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop()

    def _write_control(self, endorse: list[float]) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"latency": {"Endorse": endorse}}))
        os.replace(tmp, self.control)

    # -- database helpers (the harness's own direct connection; retried through restarts)

    async def _sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=3) as c:
            cur = await c.execute(query, params)
            return await cur.fetchall() if cur.description else []

    async def _enqueue(self, items: list[tuple[str, Any, str | None]], prefix: str) -> int:
        import psycopg

        from gxsubmit.outbox import enqueue

        async with await psycopg.AsyncConnection.connect(self.url, connect_timeout=3) as conn:
            async with conn.transaction():
                for i, (ctype, payload, key) in enumerate(items):
                    await enqueue(conn, command_type=ctype, payload=payload, schema=self.schema,
                                  request_id=f"{prefix}-{i}", service="soak", order_key=key)
        self.enqueued += len(items)
        return len(items)

    # -- load

    async def bulk(self, stop: asyncio.Event) -> None:
        """Keep BULK_PER_TYPE unfinished rows of each conflict-free type (a closed population)."""
        t = f'"{self.schema}".outbox_commands'
        types = {ctype: expr for _, ctype, expr in WORKLOAD}
        seq = 0
        while not stop.is_set():
            try:
                have = dict(await self._sql(
                    f"SELECT command_type, count(*) FROM {t}"
                    " WHERE status IN ('PENDING', 'CLAIMED', 'SUBMITTED') AND command_type = ANY(%s)"
                    " GROUP BY 1", (list(types),)))
                for ctype, expr in types.items():
                    need = BULK_PER_TYPE - int(have.get(ctype, 0))
                    if need >= 5:
                        await self._sql(
                            f"INSERT INTO {t} (service, command_type, request_id, payload) SELECT 'soak', %s,"
                            f" 'bulk-{self.seed}-{ctype}-' || g, ({expr})"
                            " FROM generate_series(%s::int, %s::int) AS g,"
                            f" (SELECT 'b{self.seed}'::text AS p) AS pp", (ctype, seq + 1, seq + need))
                        seq += need
                        self.enqueued += need
            except Exception as exc:  # the database is being restarted: try again shortly
                self._note(f"bulk: {type(exc).__name__}: {str(exc)[:160]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def rounds(self, stop: asyncio.Event, every: float) -> None:
        n = 0
        tasks: list[asyncio.Task[None]] = []
        while not stop.is_set():
            tasks.append(asyncio.create_task(self._round(f"s{self.seed}r{n}", full=n == 0, stop=stop)))
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _round(self, tag: str, *, full: bool, stop: asyncio.Event) -> None:
        t = f'"{self.schema}".outbox_commands'
        for k, phase in enumerate(round_phases(tag, full)):
            prefix = f"{tag}-p{k}"
            while True:
                try:
                    await self._enqueue(phase, prefix)
                    break
                except Exception as exc:
                    self._note(f"round enqueue: {type(exc).__name__}")
                    await asyncio.sleep(1.0)
            deadline = time.monotonic() + 90.0
            while time.monotonic() < deadline and not stop.is_set():
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    left = await self._sql(f"SELECT count(*) FROM {t} WHERE request_id LIKE %s"
                                           " AND status NOT IN ('COMMITTED', 'FAILED')", (prefix + "-%",))
                    if left and left[0][0] == 0:
                        break
            if stop.is_set():
                return

    def _note(self, text: str) -> None:
        if len(self.errors) < 200:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {text}")

    async def monitor(self, stop: asyncio.Event, t0: float) -> None:
        t = f'"{self.schema}".outbox_commands'
        last_print = 0.0
        while not stop.is_set():
            with contextlib.suppress(Exception):
                rows = await self._sql(
                    f"SELECT extract(epoch FROM now() - min(created_at))::float8, count(*) FROM {t}"
                    " WHERE status = 'PENDING'")
                age = rows[0][0] or 0.0
                self.oldest_pending_s = max(self.oldest_pending_s, float(age))
                if time.monotonic() - last_print >= 5.0:
                    last_print = time.monotonic()
                    active = [f.kind + "/" + f.target for f in self.faults if f.started and not f.ended]
                    say(f"[{time.monotonic() - t0:6.1f}s] soak: enqueued={self.enqueued} pending={rows[0][1]}"
                        f" oldest={age:.1f}s faults now: {', '.join(active) or '-'}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    # -- faults

    async def run_fault(self, f: Fault, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + f.at - time.monotonic()))
        resource = {"restart_postgres": "pg", "terminate_backends": "pg", "gateway_restart": "emu",
                    "slow_endorse": "emu-control", "cert_rotation": "wallet",
                    "db_latency": f"dbp-{f.target}", "db_blackhole": f"dbp-{f.target}",
                    "gateway_latency": f"gwp-{f.target}", "gateway_blackhole": f"gwp-{f.target}"}.get(
                        f.kind, f"sup-{f.target}")
        async with self._locks[resource]:
            f.started = time.time()
            say(f"soak: fault {f.kind} on {f.target} for {f.duration:g}s (scheduled at {f.at:g}s)")
            try:
                await getattr(self, "_" + f.kind)(f)
            except Exception as exc:
                f.detail = f"error: {type(exc).__name__}: {exc}"[:200]
                self._note(f"fault {f.kind}: {f.detail}")
            f.ended = time.time()

    async def _kill_worker(self, f: Fault) -> None:
        pids = self.sups[f.target].worker_pids()
        if not pids:
            f.detail = "no worker running"
            return
        pid = random.Random(f.at).choice(pids)
        os.kill(pid, signal.SIGKILL)
        f.detail = f"pid {pid}"

    async def _kill_supervisor(self, f: Fault) -> None:
        sup = self.sups[f.target]
        if sup.proc is not None and sup.proc.poll() is None:
            os.killpg(sup.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(sup.proc.wait, 10)
        await asyncio.sleep(f.duration)
        sup.start()

    async def _stop_worker(self, f: Fault) -> None:
        pids = self.sups[f.target].worker_pids()
        if not pids:
            f.detail = "no worker running"
            return
        pid = random.Random(f.at).choice(pids)
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)
        try:
            await asyncio.sleep(f.duration)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self.stopped.discard(pid)
        f.detail = f"pid {pid}"

    async def _restart_postgres(self, f: Fault) -> None:
        await asyncio.to_thread(self.pg.stop, "fast")
        await asyncio.sleep(f.duration)
        await asyncio.to_thread(self.pg.start)

    async def _terminate_backends(self, f: Fault) -> None:
        rows = await self._sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                               " WHERE application_name LIKE 'gxsubmit%'")
        f.detail = f"{rows[0][0]} backends"

    async def _gateway_restart(self, f: Fault) -> None:
        assert self.emu is not None
        await asyncio.to_thread(self.emu.stop)
        await asyncio.sleep(f.duration)
        await asyncio.to_thread(self.emu.start)
        for p in self.gwp.values():
            p.retarget(self.emu.target)

    async def _slow_endorse(self, f: Fault) -> None:
        self._write_control(SLOW_ENDORSE)
        try:
            await asyncio.sleep(f.duration)
        finally:
            self._write_control(BASE_ENDORSE)

    async def _link(self, f: Fault, change: Callable[[], None], undo: Callable[[], None]) -> None:
        await asyncio.to_thread(change)
        try:
            await asyncio.sleep(f.duration)
        finally:
            await asyncio.to_thread(undo)

    async def _db_latency(self, f: Fault) -> None:
        p = self.dbp[f.target]
        await self._link(f, lambda: p.delay(200.0, 100.0), lambda: p.delay(0.0))

    async def _db_blackhole(self, f: Fault) -> None:
        p = self.dbp[f.target]
        await self._link(f, p.blackhole, lambda: p.blackhole(False))

    async def _gateway_latency(self, f: Fault) -> None:
        p = self.gwp[f.target]
        await self._link(f, lambda: p.delay(200.0, 100.0), lambda: p.delay(0.0))

    async def _gateway_blackhole(self, f: Fault) -> None:
        p = self.gwp[f.target]
        await self._link(f, p.blackhole, lambda: p.blackhole(False))

    async def _cert_rotation(self, f: Fault) -> None:
        from gxsubmit.catalog import load_catalog
        from gxsubmit.devwallet import issue_identity, load_ca, write_cert, write_key

        idents = sorted(load_catalog(None).identities.items())
        name, role = random.Random(f.at).choice(idents)
        cert, key = issue_identity(load_ca(self.wallet), name, role)
        write_key(self.wallet / f"{name}-key", key)
        write_cert(self.wallet / f"{name}-cert", cert)
        f.detail = name

    # -- the whole run

    async def drive(self, rounds_every: float) -> dict[str, float]:
        t0 = time.monotonic()
        load_stop, mon_stop = asyncio.Event(), asyncio.Event()
        mon = asyncio.create_task(self.monitor(mon_stop, t0))
        bulk = asyncio.create_task(self.bulk(load_stop))
        rounds = asyncio.create_task(self.rounds(load_stop, rounds_every))
        phase_start = time.time()
        fault_tasks = [asyncio.create_task(self.run_fault(f, time.monotonic())) for f in self.faults]
        await asyncio.sleep(self.seconds)
        # Faults scheduled near the end still run to their end (their cleanup restores every resource).
        await asyncio.gather(*fault_tasks)
        phase_end = time.time()
        for sup in self.sups.values():  # a supervisor killed by the last fault restarts
            if sup.proc is None or sup.proc.poll() is not None:
                sup.start()
        load_stop.set()
        await asyncio.gather(bulk, rounds)
        say("soak: faults over, load stopped; draining")
        t = f'"{self.schema}".outbox_commands'
        deadline = time.monotonic() + self.drain_s
        left = -1
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                q = f"SELECT count(*) FROM {t} WHERE status NOT IN ('COMMITTED', 'FAILED')"
                left = (await self._sql(q))[0][0]
                if left == 0:
                    break
            await asyncio.sleep(1.0)
        drained = time.time()
        mon_stop.set()
        await mon
        return {"phase_start": phase_start, "phase_end": phase_end, "drained": drained}


def figures(soak: Soak, times: dict[str, float]) -> dict[str, Any]:
    import psycopg

    from gxsubmit.catalog import load_catalog

    audit = _load_audit()
    t = f'"{soak.schema}".outbox_commands'
    rows = audit.outbox_rows(soak.url, soak.schema)
    cat = load_catalog(None)
    keys: dict[Any, Any] = {}
    for cid, row in rows.items():
        route = cat.route(row["command_type"])
        if route is None:
            continue
        try:
            payload = row["payload"]  # text since the audit keeps the stored bytes (not every row is JSON)
            if isinstance(payload, str):
                payload = json.loads(payload)
            keys[cid] = audit.args_key(route.function, route.build_args(payload))
        except ValueError:
            continue  # poison: its payload does not build; it must end FAILED (checked below)
    counts = Counter(keys.values())
    expected = {cid: k for cid, k in keys.items() if counts[k] == 1}
    assert soak.emu is not None
    ledger = soak.emu.workdir / f"{soak.emu.name}-ledger.jsonl"
    report = audit.audit_exactly_once(ledger, expected, rows, require_committed=False)
    lines = audit.read_ledger(ledger)
    by_args = audit.valid_by_args(lines)
    valid_tx = Counter(str(x["tx_id"]) for x in lines if x.get("validation_code") == "VALID")
    duplicated = sum(1 for k in expected.values() if len(by_args.get(k, [])) > 1)
    duplicated += sum(1 for n in valid_tx.values() if n > 1)
    lost = 0
    lost_examples: list[str] = []
    for cid, row in rows.items():
        k = expected.get(cid)
        txs = by_args.get(k, []) if k is not None else []
        wrong_tx = len(txs) != 1 or row["fabric_tx_id"] != txs[0]
        bad = (row["status"] == "FAILED" and row.get("error_code") in LOST_CODES) or (
            k is not None and row["status"] == "COMMITTED" and wrong_tx) or (
            k is not None and row["status"] == "FAILED" and bool(txs))
        if bad:
            lost += 1
            if len(lost_examples) < 10:
                lost_examples.append(f"{cid} {row['command_type']} {row['status']} {row.get('error_code')}:"
                                     f" {str(row.get('error'))[:160]}")
    status = Counter(r["status"] for r in rows.values())
    stuck_rows = [r for r in rows.values() if r["status"] not in ("COMMITTED", "FAILED")]
    failed_codes = Counter(str(r.get("error_code")) for r in rows.values() if r["status"] == "FAILED")
    with psycopg.connect(soak.url, autocommit=True) as c:
        per_s = c.execute(
            f"SELECT extract(epoch FROM date_trunc('second', committed_at))::bigint, count(*) FROM {t}"
            " WHERE status = 'COMMITTED' AND committed_at >= to_timestamp(%s)"
            " AND committed_at < to_timestamp(%s)"
            " GROUP BY 1", (times["phase_start"], times["phase_end"])).fetchall()
        lat = [float(r[0]) for r in c.execute(
            f"SELECT extract(epoch FROM committed_at - created_at) * 1000 FROM {t}"
            " WHERE status = 'COMMITTED'")]
        recovery: dict[str, list[float]] = defaultdict(list)
        never: Counter[str] = Counter()
        for f in soak.faults:
            if f.ended is None:
                continue
            like = f"soak-{f.target}:%" if f.kind in PER_REPLICA else "%"
            first = c.execute(
                f"SELECT extract(epoch FROM min(committed_at))::float8 FROM {t} WHERE status = 'COMMITTED'"
                " AND committed_at >= to_timestamp(%s) AND locked_by LIKE %s", (f.ended, like)).fetchone()[0]
            if first is None:
                never[f.kind] += 1
            else:
                recovery[f.kind].append(max(0.0, float(first) - f.ended))
    in_fault = out_fault = 0
    secs_in = secs_out = 0
    by_sec = dict(per_s)
    for s in range(int(times["phase_start"]) + 1, int(times["phase_end"])):
        hit = any(f.started is not None and f.started - 1 <= s <= (f.ended or f.started) for f in soak.faults)
        n = int(by_sec.get(s, 0))
        if hit:
            in_fault, secs_in = in_fault + n, secs_in + 1
        else:
            out_fault, secs_out = out_fault + n, secs_out + 1
    kinds = Counter(f.kind for f in soak.faults if f.started is not None)
    out: dict[str, Any] = {
        "config": f"2 supervisors, seed {soak.seed}, {soak.seconds / 60:g} min of faults",
        "seed": soak.seed,
        "commands": len(rows),
        "lost": lost,
        "duplicated": duplicated,
        "stuck": len(stuck_rows),
        "stuck_by_code": dict(Counter(str(r.get("error_code")) for r in stuck_rows)),
        "audit_ok": report.ok,
        "audit": str(report)[:3000],
        "audited_commands": len(expected),
        "unaudited_commands": len(rows) - len(expected),
        "by_status": dict(status),
        "failed_by_code": dict(failed_codes),
        "lost_examples": lost_examples,
        "faults": dict(sorted(kinds.items())),
        "every_kind_present": set(kinds) == set(KINDS),
        "recovery_s": {k: {"p50": round(percentile(v, 50) or 0.0, 2), "max": round(max(v), 2), "n": len(v)}
                       for k, v in sorted(recovery.items())},
        "recovery_no_commit_after": dict(never),
        "oldest_pending_s": round(soak.oldest_pending_s, 1),
        "commands_per_s_in_faults": round(in_fault / secs_in, 1) if secs_in else None,
        "commands_per_s_outside_faults": round(out_fault / secs_out, 1) if secs_out else None,
        "seconds_in_faults": secs_in,
        "seconds_outside_faults": secs_out,
        "commands_per_s": (sum(int(n) for _, n in per_s) / (times["phase_end"] - times["phase_start"])),
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "drain_s": round(times["drained"] - times["phase_end"], 1),
        "schedule": [asdict(f) for f in soak.faults],
        "harness_notes": soak.errors[:50],
        "targets": TARGETS,
    }
    out["note"] = (f"lost {lost} dup {duplicated} stuck {len(stuck_rows)}; {sum(kinds.values())} faults of "
                   f"{len(kinds)} kinds; oldest PENDING {out['oldest_pending_s']} s")
    return out


def run_soak(workdir: Path, *, minutes: float, seed: int, rounds_every: float = 10.0,
             drain_s: float = 90.0) -> dict[str, Any]:
    """Set up, run the schedule, drain, audit; everything started is stopped before returning."""
    from gxsubmit.devwallet import make_dev_wallet

    wallet = workdir / "soak-wallet"  # its own: the certificate rotations rewrite it
    make_dev_wallet(wallet)
    soak = Soak(workdir=workdir, wallet=wallet, seconds=minutes * 60.0, seed=seed, drain_s=drain_s)
    soak.faults = make_schedule(seed, soak.seconds)
    say(f"soak: seed {seed}, {len(soak.faults)} faults over {minutes:g} min:")
    for f in soak.faults:
        say(f"  at {f.at:6.1f}s  {f.kind:19s} {f.target}  {f.duration:g}s")
    try:
        soak.start()
        times = asyncio.run(soak.drive(rounds_every))
    finally:
        soak.close()
    # the audit reads the table: the database comes back for it
    soak.pg.start()
    try:
        return figures(soak, times)
    finally:
        soak.pg.stop()


def run(ctx: Context) -> dict[str, Any]:
    args = ctx.shared.get("args", {})
    minutes = args.get("minutes") or (3.0 if ctx.quick else 30.0)
    if ctx.quick:
        minutes = min(minutes, 3.5)  # --quick: at most 5 minutes in all
    seed = args.get("seed")
    if seed is None:
        seed = random.SystemRandom().randrange(1, 1_000_000)
    result = run_soak(ctx.workdir, minutes=minutes, seed=seed, drain_s=60.0 if ctx.quick else 180.0)
    return {"configs": [result], "settings": {
        "supervisors": 2, "max_in_flight": 64, "lease_s": LEASE_S,
        "emulator": "0.5 s blocks, Endorse 5-20 ms",
        "bulk_population": f"{BULK_PER_TYPE} unfinished rows per conflict-free type",
        "kinds": list(KINDS), "lost_codes": sorted(LOST_CODES)}}
