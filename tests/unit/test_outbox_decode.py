"""The claim's fast paths give exactly what the plain ones gave: json.loads payloads, real ClaimedCommands."""

from __future__ import annotations

import dataclasses
import json
import pickle
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gxsubmit.outbox import ClaimedCommand, _claimed, _decode_payloads, _json_loads

# JSON values with the numbers orjson would read differently from json.loads (integers beyond 64 bits,
# on either side) and digit runs inside strings, which must not change anything either.
_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 10, max_value=2**64 + 10),
    st.integers(min_value=-(2**63) - 10, max_value=-(2**63) + 10),
    st.integers(min_value=10**19, max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, st.text(), st.from_regex(r"[0-9]{15,25}"))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 == 1.0, but an int must not become a float)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(st.lists(_values, min_size=1, max_size=6))
def test_batch_decoding_matches_json_loads(values: list[Any]) -> None:
    texts = [json.dumps(v, ensure_ascii=False) for v in values]
    assert _same(_decode_payloads(texts), [json.loads(t) for t in texts])


@pytest.mark.parametrize(
    "text",
    [
        "18446744073709551616",  # 2**64: orjson would give a float
        "-9223372036854775809",  # below int64
        '{"amount": 123456789012345678901234567890, "a": [1, 2]}',
        '{"id": "12345678901234567890123"}',  # a long digit run in a string
        '"\\ud800"',  # a lone surrogate escape: orjson refuses it, json.loads does not
        '{"k": 1e400}',
        '{"nested": {"x": [0.1, -0, 1.5e-320]}}',
    ],
)
def test_texts_orjson_reads_differently_fall_back_to_json(text: str) -> None:
    assert _same(_json_loads(text), json.loads(text))
    assert _same(_decode_payloads([text, "{}"]), [json.loads(text), {}])


def test_claimed_builds_a_frozen_claimed_command() -> None:
    row = (
        uuid.uuid4(), 7, "default", "svc", "MINT", "r1", "{}", 3, 1, uuid.uuid4(), b"n" * 24, "tx", "fp",
        datetime(2026, 1, 2, tzinfo=UTC), True, datetime(2025, 1, 2, tzinfo=UTC), 0, 2,
        datetime(2025, 1, 3, tzinfo=UTC),
    )
    got = _claimed(row, {"x": 1})
    want = ClaimedCommand(*row[:6], {"x": 1}, *row[7:])  # type: ignore[arg-type]  # a row is a tuple of Any
    assert type(got) is ClaimedCommand
    assert got == want and repr(got) == repr(want)
    assert (got.attempts, got.counted_attempts) == (3, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.attempts = 2  # type: ignore[misc]  # the point: frozen
    assert dataclasses.replace(got, attempts=2).attempts == 2
    assert pickle.loads(pickle.dumps(got)) == want
