"""Migrations are additive, so the previous release keeps working during a rollout and after a rollback.

A rolling update runs old and new pods against one schema; `kubectl rollout undo` runs the old
release against the new schema. Both are safe only if no migration removes or reshapes what an
older release reads or writes. This test holds every migration file to that rule.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest

_MIGRATION = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")
#: Statements that would break an older release still running against the migrated schema.
_FORBIDDEN = [
    (re.compile(r"\bDROP\s+(TABLE|COLUMN|INDEX|TYPE|SCHEMA|VIEW)\b", re.I), "drops an object"),
    (re.compile(r"\bRENAME\b", re.I), "renames an object"),
    (re.compile(r"\bALTER\s+COLUMN\s+\w+\s+(SET\s+DATA\s+)?TYPE\b", re.I), "changes a column type"),
    (re.compile(r"\bALTER\s+COLUMN\s+\w+\s+SET\s+NOT\s+NULL\b", re.I), "tightens a column"),
    (re.compile(r"\bADD\s+COLUMN\b(?![^;]*\bDEFAULT\b)(?=[^;]*\bNOT\s+NULL\b)", re.I),
     "adds a NOT NULL column without a default (old inserts would fail)"),
]


def _migrations() -> list[tuple[str, str]]:
    files = resources.files("gxsubmit") / "sql"
    out = [(f.name, f.read_text()) for f in files.iterdir() if _MIGRATION.match(f.name)]
    return sorted(out)


def _without_comments(text: str) -> str:
    return re.sub(r"--[^\n]*", "", text)


def test_migrations_are_numbered_from_one_each_number_once() -> None:
    # Numbers are reserved per change while several are developed at once, so a gap may exist until the
    # lower one lands; a number used twice never may.
    numbers = [int(name[:4]) for name, _ in _migrations()]
    assert numbers and numbers[0] == 1 and numbers == sorted(set(numbers))


@pytest.mark.parametrize(("name", "text"), _migrations())
def test_migration_is_additive(name: str, text: str) -> None:
    body = _without_comments(text)
    for pattern, what in _FORBIDDEN:
        match = pattern.search(body)
        assert match is None, f"{name} {what}: {match.group(0) if match else ''!r}"


@pytest.mark.parametrize("bad", [
    "ALTER TABLE {schema}.outbox_commands DROP COLUMN error;",
    "ALTER TABLE {schema}.outbox_commands RENAME COLUMN error TO last_error;",
    "ALTER TABLE {schema}.outbox_commands ALTER COLUMN attempts TYPE bigint;",
    "ALTER TABLE {schema}.outbox_commands ADD COLUMN priority int NOT NULL;",
])
def test_the_rule_catches_breaking_changes(bad: str) -> None:
    assert any(p.search(bad) for p, _ in _FORBIDDEN)
