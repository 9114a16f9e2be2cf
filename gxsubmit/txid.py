"""Derived transaction nonces: the same command always gets the same Fabric tx id.

The protocol: docs/design.md#the-nonce-is-derived-not-drawn.

A command's nonce is a keyed, domain-separated, versioned function of who asked for it and what it
asks the ledger to do, plus a *generation* that only a definite INVALID commit of the previous tx id
advances:

    nonce = VERSION_BYTE ‖ HMAC-SHA256(key, DOMAIN ‖ lp(tenant_id) ‖ lp(request_id)
                                            ‖ content_digest ‖ u32(generation))[:24]
    content_digest = SHA-256(lp(channel) ‖ lp(chaincode) ‖ lp(function) ‖ u32(n) ‖ lp(arg_1) … lp(arg_n))

``lp`` is a 4-byte big-endian length then the UTF-8 bytes, so no two input tuples share an encoding.
Every replica, every restart and every restore of the database computes the same nonce, and with the
same creator the same tx id, so Fabric's duplicate-tx-id rule refuses a second copy even when the
table has forgotten that the command was sent.

The key is 32 random bytes that migration 0008 stores once in the schema (``gxsubmit_txid_key``), so
every replica and every backup of the database already holds it and no operator setting is needed. It
keeps the nonce, which Fabric writes in clear into every block, from confirming guesses of request
ids. The version byte leads the nonce and is part of the MAC's domain: a later derivation gets its own
byte and can never produce a v1 nonce.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

__all__ = ["DOMAIN", "KEY_BYTES", "VERSION", "TxIdDeriver", "content_digest", "derive_nonce"]

#: Leads every derived nonce; a future derivation takes the next value.
VERSION = 1
DOMAIN = b"gxsubmit/fabric-tx-nonce/v1\x00"
KEY_BYTES = 32
_MAC_BYTES = 24  # as long as the random nonces before derivation (Fabric's own clients use 24)


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def content_digest(channel: str, chaincode: str, function: str, args: Sequence[str]) -> bytes:
    """What the transaction asks of the ledger, as the peer sees it (not the producer's payload: fields
    the catalogue does not send, or JSON key order, do not change it)."""
    parts = [_lp(channel.encode()), _lp(chaincode.encode()), _lp(function.encode()),
             struct.pack(">I", len(args))]
    parts.extend(_lp(a.encode()) for a in args)
    return hashlib.sha256(b"".join(parts)).digest()


def derive_nonce(key: bytes, *, tenant_id: str, request_id: str, content: bytes, generation: int) -> bytes:
    """The nonce of one command at one generation (pure; see the module docstring)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"the tx id key must be {KEY_BYTES} bytes")
    if not 0 <= generation < 2**32:
        raise ValueError("generation out of range")
    if len(content) != 32:
        raise ValueError("content must be a SHA-256 digest (content_digest)")
    msg = b"".join((DOMAIN, _lp(tenant_id.encode()), _lp(request_id.encode()), content,
                    struct.pack(">I", generation)))
    return bytes([VERSION]) + hmac.new(key, msg, hashlib.sha256).digest()[:_MAC_BYTES]


class TxIdDeriver:
    """:func:`derive_nonce` bound to one schema's key (read once at worker start-up)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the tx id key must be {KEY_BYTES} bytes")
        self._key = key

    def nonce(self, *, tenant_id: str, request_id: str, channel: str, chaincode: str, function: str,
              args: Sequence[str], generation: int) -> bytes:
        return derive_nonce(self._key, tenant_id=tenant_id, request_id=request_id,
                            content=content_digest(channel, chaincode, function, args), generation=generation)

    def __repr__(self) -> str:
        return "TxIdDeriver(key=<hidden>)"
