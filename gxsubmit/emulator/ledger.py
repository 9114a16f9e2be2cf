"""The emulator's ledger: an append-only JSON-lines file plus the in-memory indexes derived from it.

One line per transaction, valid or not, written and flushed once per block. Live commits and the
replay at start-up go through the same ``_apply`` so a restarted emulator has exactly the state,
tx-id index (duplicate detection, CommitStatus), block height and per-block transaction list
(DeliverFiltered) it had before.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

__all__ = ["BlockTxs", "EventRecord", "Ledger", "LedgerError", "TxLocation"]


class LedgerError(Exception):
    """The ledger file cannot be read back."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    tx_id: str
    tx_num: int
    chaincode: str
    name: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class TxLocation:
    """Where the FIRST copy of a tx id sits and how it was validated."""

    block: int
    tx_num: int
    code: int


class BlockTxs:
    """Every transaction of one block, valid or not, in block order: what a filtered block shows.

    Columns rather than one object per transaction (~17 bytes a transaction besides the tx id, which
    the index shares): ``codes[i]`` is the validation code value, ``events[i]`` the (chaincode, event
    name) the transaction emitted, or None. Equal event pairs are one shared tuple.
    """

    __slots__ = ("codes", "events", "tx_ids")

    def __init__(self) -> None:
        self.tx_ids: list[str] = []
        self.codes = bytearray()
        self.events: list[tuple[str, str] | None] = []

    def __len__(self) -> int:
        return len(self.tx_ids)


class Ledger:
    def __init__(self, path: Path, *, fsync: bool = False, code_values: dict[str, int] | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._codes = code_values or {}
        self.state: dict[str, tuple[bytes, int, int]] = {}
        self.index: dict[str, TxLocation] = {}
        self.block_events: list[list[EventRecord]] = [[]]  # block 0: the genesis (config) block
        self.blocks: list[BlockTxs] = [BlockTxs()]  # block 0 has no endorser transactions
        self._event_keys: dict[tuple[str, str], tuple[str, str]] = {}
        self.counts: Counter[str] = Counter()
        self._file: Any = None

    @property
    def height(self) -> int:
        """Number of blocks, i.e. the number the next block gets."""
        return len(self.block_events)

    def open(self) -> int:
        """Replay the file (if any) and open it for appending; returns the number of transactions read."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        if self.path.exists():
            data = self.path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                # A torn last line (crash mid-write): drop it; that block never completed.
                with open(self.path, "r+b") as fh:
                    fh.truncate(end)
            for lineno, raw in enumerate(data[:end].splitlines(), 1):
                if not raw.strip():
                    continue
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise LedgerError(f"{self.path}:{lineno}: not JSON ({exc})") from None
                self._apply(line)
                n += 1
        self._file = open(self.path, "ab")  # kept open for the emulator lifetime
        return n

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def commit(self, block: int, lines: list[dict[str, Any]]) -> None:
        """Append one block's transactions (write + flush, fsync if asked), then apply them."""
        if block != self.height:
            raise LedgerError(f"block {block} out of order (height {self.height})")
        blob = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        self._file.write(blob)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        for line in lines:
            self._apply(line)
        if not lines:
            self.block_events.append([])
            self.blocks.append(BlockTxs())

    def _apply(self, line: dict[str, Any]) -> None:
        block = int(line["block"])
        tx_num = int(line.get("tx_num", 0))
        while len(self.block_events) <= block:
            self.block_events.append([])
            self.blocks.append(BlockTxs())
        name = str(line["validation_code"])
        code = self._codes.get(name, 255)
        tx_id = str(line["tx_id"])
        if tx_id and tx_id not in self.index:
            self.index[tx_id] = TxLocation(block, tx_num, code)
        self.counts[name] += 1
        event = line.get("event")
        txs = self.blocks[block]
        txs.tx_ids.append(tx_id)
        txs.codes.append(code if 0 <= code <= 255 else 255)
        if event:
            pair = (str(line.get("chaincode", "")), str(event["name"]))
            shared = self._event_keys.get(pair)
            if shared is None:
                shared = pair
                if len(self._event_keys) < 10_000:  # a chaincode has a handful of event names
                    self._event_keys[pair] = pair
            txs.events.append(shared)
        else:
            txs.events.append(None)
        if name != "VALID":
            return
        for key, value in (line.get("writes") or {}).items():
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = (value.encode(), block, tx_num)
        if event:
            self.block_events[block].append(
                EventRecord(
                    tx_id,
                    tx_num,
                    str(line.get("chaincode", "")),
                    str(event["name"]),
                    str(event.get("payload", "")).encode(),
                )
            )
