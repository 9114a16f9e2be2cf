"""The named statements of ``gxsubmit/sql/queries.sql``, loaded once and bound to a schema.

All SQL lives in ``gxsubmit/sql``; this module is how the rest of the outbox package reaches it.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

CHANNEL = "gxsubmit"  # also spelled out in sql/0001_init.sql and queries.sql

_NAME_RE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def _sql_text(name: str) -> str:
    return resources.files("gxsubmit").joinpath("sql", name).read_text(encoding="utf-8")


@cache
def _queries() -> dict[str, str]:
    text = _sql_text("queries.sql")
    parts = _NAME_RE.split(text)
    # parts = [header, name1, body1, name2, body2, ...]
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}



def _compose(name: str, schema: str, **literals: int) -> sql.Composed:
    subs: dict[str, sql.Composable] = {"schema": sql.Identifier(schema), "schema_name": sql.Literal(schema)}
    subs.update({k: sql.Literal(v) for k, v in literals.items()})
    return sql.SQL(_queries()[name]).format(**subs)
