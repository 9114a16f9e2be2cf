"""The claim stays on its partial index with a large backlog, however the statement is planned.

A generic plan for the claim that scans the whole table costs ~10 ms per claim at 20k rows. The store
never prepares server-side (a transaction pooler breaks named statements: gxsubmit.dbroute), so each
claim is planned for its parameters; we check that plan on the store's session, that nothing was
prepared there, and the plan forced generic on a plain session (what a pooler's protocol-level
prepared statements would run).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from gxsubmit.outbox import OutboxStore, _compose

BACKLOG = 30_000


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += _nodes(child)
    return out


def _fill(pg_url: str, schema: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (service, command_type, request_id, payload) "
                "SELECT 'bench', (ARRAY['MINT','CREATE_USER','TRANSFER_TOKENS'])[1 + g %% 3], 'r' || g, '1' "
                "FROM generate_series(1, %s) AS g"
            ).format(sql.Identifier(schema, "outbox_commands")),
            [BACKLOG],
        )
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "outbox_commands")))


def _assert_index_plan(plan_json: Any, limit: int) -> None:
    nodes = _nodes(plan_json[0]["Plan"])
    on_table = [n for n in nodes if n.get("Relation Name") == "outbox_commands"]
    assert on_table, nodes
    assert not [n for n in on_table if n["Node Type"] == "Seq Scan"], json.dumps(plan_json, indent=1)
    scans = {n.get("Index Name") for n in on_table}
    assert "outbox_commands_pending_idx" in scans
    for n in on_table:
        if "Actual Rows" in n and n.get("Index Name") == "outbox_commands_pending_idx":
            # FIFO head: the scan stops after about ``limit`` rows instead of reading the backlog
            assert n["Actual Rows"] <= 3 * limit + 10, n


async def test_the_stores_claim_uses_the_partial_index(pg_url: str, schema: str) -> None:
    _fill(pg_url, schema)
    store = await OutboxStore.connect(pg_url, schema=schema, worker_id="plan")
    try:
        for _ in range(8):  # > psycopg's default prepare_threshold (5) and > PostgreSQL's 5 custom plans
            got = await store.claim(["MINT", "TRANSFER_TOKENS"], 100, 300.0)
            assert len(got) == 100
        conn = store._conn
        assert conn is not None
        cur = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
        assert await cur.fetchone() == (0,)  # nothing a transaction pooler could lose or collide on
        text = _compose("claim", schema, limit=100).as_string(conn)
        async with conn.transaction():
            cur = await conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + text,
                {"types": ["MINT", "TRANSFER_TOKENS"], "worker_id": "plan", "lease_s": 300.0},
            )
            row = await cur.fetchone()
            assert row is not None
            plan = row[0]
            _assert_index_plan(plan, 100)
            raise psycopg.Rollback()
    finally:
        await store.close()


def test_generic_plan_of_the_claim_is_an_index_scan(pg_url: str, schema: str) -> None:
    _fill(pg_url, schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        text = _compose("claim", schema, limit=100).as_string(conn)
        for p in ("types", "worker_id", "lease_s"):
            text = text.replace(f"%({p})s", {"types": "$1", "worker_id": "$2", "lease_s": "$3"}[p])
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(sql.SQL("PREPARE gxt_claim(text[], text, float8) AS ") + sql.SQL(text))
        try:
            with conn.transaction():
                for _ in range(7):
                    conn.execute("EXECUTE gxt_claim(ARRAY['MINT'], 'x', 300)")
                plan = conn.execute(
                    "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE gxt_claim(ARRAY['MINT'], 'x', 300)"
                ).fetchone()
                assert plan is not None
                _assert_index_plan(plan[0], 100)
                raise psycopg.Rollback()
        finally:
            conn.execute("DEALLOCATE ALL")  # psycopg may already have done so at the rollback
