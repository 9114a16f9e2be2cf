"""Decoding the claim's payloads row by row: one row that Python cannot read never fails its batch.

PostgreSQL's jsonb accepts what Python's JSON readers refuse or choke on: a number of 5,000 digits
(jsonb also stores ``1e5000`` as its 5,001 digits; ``int()`` stops at 4,300), an array nested 5,000
deep (RecursionError), a string of 20 MB. The claim used to decode its whole batch in one call after
the rows were already leased, so such a row failed every claim it was in, and the rows beside it with
it, lease after lease. Here the fast batch path stays; when it fails, each row is decoded alone and a
row that cannot be becomes a :class:`BadPayload`, which the pipeline fails with its code and reason
(short: never the payload itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["BadPayload", "decode_payloads", "json_loads"]

#: bytes.translate table: every ASCII digit becomes "0", "-" stays, any other byte becomes a space.
_DIGIT_RUNS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x2D if b == 0x2D else 0x20 for b in range(256))
#: orjson turns integers beyond 64 bits into floats; json.loads keeps them exact. Such a number has at
#: least 20 digits, or 19 after a minus sign.
_BIG_INTS = (b"0" * 20, b"-" + b"0" * 19)


@dataclass(frozen=True, slots=True)
class BadPayload:
    """A payload this worker will not send: ``code`` is the row's error code, ``reason`` says why."""

    code: str
    reason: str


def _may_hold_big_int(text: bytes) -> bool:
    digits = text.translate(_DIGIT_RUNS)
    return _BIG_INTS[0] in digits or _BIG_INTS[1] in digits


def json_loads(text: str) -> Any:
    """json.loads's result, faster: orjson unless the text may hold what orjson reads differently
    (integers beyond 64 bits, lone surrogate escapes), which the stdlib keeps exact.
    """
    data = text.encode()
    if not _may_hold_big_int(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _why(exc: BaseException) -> str:
    """A short reason naming what the reader refused, never the payload's text."""
    if isinstance(exc, RecursionError):
        return "payload is nested too deep to decode"
    text = str(exc)
    if "integer string conversion" in text or "Exceeds the limit" in text:
        return "payload holds a number with too many digits to decode (more than 4300)"
    return f"payload cannot be decoded: {type(exc).__name__}: {text[:120]}"


def _one(text: str, max_bytes: int | None) -> Any:
    if max_bytes is not None and len(text) > max_bytes // 4:  # a character is at most 4 UTF-8 bytes
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return BadPayload("PAYLOAD_TOO_LARGE",
                              f"payload is {size} bytes, over the limit of {max_bytes} (max_payload_bytes)")
    try:
        return json_loads(text)
    except (ValueError, RecursionError, MemoryError) as exc:
        return BadPayload("PAYLOAD_INVALID", _why(exc))


def decode_payloads(texts: list[str], max_bytes: int | None = None) -> list[Any]:
    """The claim's payloads (JSON text), decoded; a row that cannot be is a :class:`BadPayload`.

    One orjson call for the batch when it can (psycopg's jsonb loader, a Python call per row, cost
    1.4 us a row against 0.2); row by row when a row is over ``max_bytes`` or the batch needs the
    stdlib or does not decode, so a bad row costs only itself.
    """
    if max_bytes is None or max(map(len, texts), default=0) <= max_bytes // 4:
        data = ("[" + ",".join(texts) + "]").encode()
        if not _may_hold_big_int(data):
            try:
                out: list[Any] = orjson.loads(data)
                return out
            except orjson.JSONDecodeError:
                pass
    return [_one(t, max_bytes) for t in texts]
