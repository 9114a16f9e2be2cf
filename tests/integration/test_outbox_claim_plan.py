"""The claim stays on its partial index with a large backlog, even once the statement is prepared.

DESIGN 3: psycopg prepares a statement after a few executions; a generic plan for the claim that scans
the whole table costs ~10 ms per claim at 20k rows. We check the plan both as the store runs it
(psycopg-prepared, on the store's session) and forced generic on a plain session.
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


async def test_prepared_claim_uses_the_partial_index(pg_url: str, schema: str) -> None:
    _fill(pg_url, schema)
    store = await OutboxStore.connect(pg_url, schema=schema, worker_id="plan")
    try:
        for _ in range(8):  # > psycopg's prepare_threshold (5) and > PostgreSQL's 5 custom plans
            got = await store.claim(["MINT", "TRANSFER_TOKENS"], 100, 300.0)
            assert len(got) == 100
        conn = store._conn
        assert conn is not None
        cur = await conn.execute(
            "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%%FOR UPDATE SKIP LOCKED%%'"
        )
        ((name, runs),) = await cur.fetchall()
        assert runs >= 3  # psycopg did prepare it; executions after that ran the prepared statement
        async with conn.transaction():
            cur = await conn.execute(
                sql.SQL(
                    "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {}(ARRAY['MINT', 'TRANSFER_TOKENS'], 'plan', 300)"
                ).format(sql.Identifier(name))
            )
            plan = (await cur.fetchone())[0]  # type: ignore[index]
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
        conn.execute(sql.SQL("PREPARE gxt_claim(text[], text, float8) AS ") + sql.SQL(text))  # type: ignore[arg-type]
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
