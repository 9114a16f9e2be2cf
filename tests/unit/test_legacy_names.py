"""Table names for ``gxsubmit migrate --legacy-outbox`` read as SQL reads them."""

from __future__ import annotations

import pytest

from gxsubmit.legacy import LegacyError, parse_table_name


@pytest.mark.parametrize(("text", "expected"), [
    ('"OutboxCommand"', (None, "OutboxCommand")),
    ('gx."OutboxCommand"', ("gx", "OutboxCommand")),
    ('"GX Schema"."Outbox""Command"', ("GX Schema", 'Outbox"Command')),
    ("OutboxCommand", (None, "outboxcommand")),
    (" public.outbox ", ("public", "outbox")),
])
def test_names(text: str, expected: tuple[str | None, str]) -> None:
    assert parse_table_name(text) == expected


@pytest.mark.parametrize("text", ['"Outbox', '""', "a.b.c", "a b", "", "1abc", 'gx.', '"a"x'])
def test_bad_names_are_one_line(text: str) -> None:
    with pytest.raises(LegacyError) as info:
        parse_table_name(text)
    assert "\n" not in str(info.value)
