"""The peer/orderer/committer state machine the emulator's services share, on one asyncio loop."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fabric_protos.peer import (
    chaincode_event_pb2,
    transaction_pb2,
)

from gxsubmit.emulator import chaincode as cc
from gxsubmit.emulator import wire
from gxsubmit.emulator.faults import Faults
from gxsubmit.emulator.ledger import Ledger, TxLocation
from gxsubmit.emulator.network import CHANNEL, ENDORSING_ORGS, QSCC, _Endorser
from gxsubmit.emulator.validation import (
    CODE_NAMES,
    TX,
    EndorserError,
    IdentityRegistry,
    ParsedProposal,
    TxInfo,
    proposal_hash,
    validate_proposal,
)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Core:
    def __init__(
        self,
        *,
        ledger: Ledger,
        registry: IdentityRegistry,
        endorsers: dict[str, _Endorser],
        faults: Faults,
        rng: random.Random,
        block_time: float,
        block_size: int,
        time_window_s: float | None,
        envelope_check: str,
    ) -> None:
        self.ledger = ledger
        self.registry = registry
        self.endorsers = endorsers
        self.endorser_keys = {e.identity: (e.mspid, e.key.public_key()) for e in endorsers.values()}
        self.faults = faults
        self.rng = rng
        self.block_time = block_time
        self.block_size = block_size
        self.time_window_s = time_window_s
        self.envelope_check = envelope_check
        self.pending: list[TxInfo] = []
        self.endorsed: dict[str, TxInfo] = {}
        self.waiters: dict[str, list[asyncio.Future[TxLocation]]] = {}
        self.block_signal = asyncio.Event()  # set, then replaced, after each cut: wakes every stream
        self._have_pending = asyncio.Event()
        self._full = asyncio.Event()
        self.counters: Counter[str] = Counter()
        self.fatal: str | None = None

    def roll(self, p: float) -> bool:
        return p > 0.0 and self.rng.random() < p

    # -- endorsement ---------------------------------------------------------------------------

    def simulate(self, pp: ParsedProposal) -> tuple[TxInfo, cc.SimResult]:
        """What the gateway's local (Org1) endorser does; raises EndorserError or ChaincodeError."""
        creator = validate_proposal(pp, self.registry, now=time.time(), time_window_s=self.time_window_s)
        if pp.channel != CHANNEL:
            raise EndorserError(f"channel '{pp.channel}' not found")
        if pp.tx_id in self.ledger.index:
            raise EndorserError(
                f"duplicate transaction found [{pp.tx_id}]. Creator [{pp.creator_bytes.hex()}]"
            )
        args = [a.decode("utf-8", "replace") for a in pp.args[1:]]
        if pp.chaincode == QSCC:
            res = self._qscc(pp.function, args)
        elif pp.chaincode != cc.CHAINCODE_NAME:
            raise EndorserError(
                f"make sure the chaincode {pp.chaincode} has been successfully defined on channel "
                f"{pp.channel} and try again: chaincode {pp.chaincode} not found",
                no_response=True,
            )
        else:
            res = cc.invoke(pp.function, args, role=creator.role, tx_id=pp.tx_id, state=self.ledger.state)
        ts = pp.channel_header.timestamp
        info = TxInfo(
            tx_id=pp.tx_id,
            channel=pp.channel,
            chaincode=pp.chaincode,
            args=pp.args,
            creator=creator,
            mspid=creator.mspid,
            timestamp=ts.seconds + ts.nanos / 1e9,
        )
        return info, res

    def _qscc(self, function: str, args: list[str]) -> cc.SimResult:
        """The query system chaincode's GetTransactionByID, as the Fabric peer answers it: the committed
        transaction's validation code (the envelope itself is not kept by this emulator), or status 500
        naming the ledger's "no such transaction ID" when the ledger index does not hold it."""
        if function != "GetTransactionByID":
            raise cc.ChaincodeError(500, f"Requested function {function} not found.")
        if len(args) < 2:
            raise cc.ChaincodeError(500, "Incorrect number of arguments, 1")
        channel, tx_id = args[0], args[1]
        if channel != CHANNEL:
            raise cc.ChaincodeError(500, f"Invalid chain ID, {channel}")
        loc = self.ledger.index.get(tx_id)
        if loc is None:
            missing = f"no such transaction ID [{tx_id}] in index"
            raise cc.ChaincodeError(500, f"Failed to get transaction with id {tx_id}, error {missing}")
        found = transaction_pb2.ProcessedTransaction(validationCode=loc.code)
        return cc.SimResult(payload=found.SerializeToString())

    def prepare(self, pp: ParsedProposal, info: TxInfo, res: cc.SimResult, orgs: Sequence[str]) -> bytes:
        """Assemble the unsigned envelope exactly as the gateway's prepareTransaction does.

        The bytes are written directly (``wire``); they equal the fabric_protos serialization.
        """
        event: chaincode_event_pb2.ChaincodeEvent | None = None
        events = b""
        if res.event_name:
            event = chaincode_event_pb2.ChaincodeEvent(
                chaincode_id=pp.chaincode,
                tx_id=pp.tx_id,
                event_name=res.event_name,
                payload=res.event_payload,
            )
            events = wire.chaincode_event(pp.chaincode, pp.tx_id, res.event_name, res.event_payload)
        prp = wire.proposal_response_payload(
            proposal_hash(pp),
            wire.rwset(pp.chaincode, res.reads, res.writes),
            events,
            200,
            res.payload,
            pp.chaincode,
            cc.CHAINCODE_VERSION,
        )
        endorsements = []
        for org in orgs:
            e = self.endorsers[org]
            endorsements.append((e.identity, e.sign(prp + e.identity)))
        payload = wire.endorsed_payload(
            pp.channel_header_bytes, pp.signature_header_bytes, pp.input_only_payload, prp, endorsements
        )
        info.reads = list(res.reads.items())
        info.writes = list(res.writes.items())
        info.event = event
        info.endorsed_by = frozenset(orgs)
        info.payload = payload
        if len(self.endorsed) >= 200_000:
            self.endorsed.pop(next(iter(self.endorsed)))
        self.endorsed[pp.tx_id] = info
        return payload

    # -- ordering ------------------------------------------------------------------------------

    def order(self, info: TxInfo) -> None:
        self.pending.append(info)
        self._have_pending.set()
        if len(self.pending) >= self.block_size:
            self._full.set()

    async def run_cutter(self) -> None:
        """Cut a block when ``block_size`` transactions wait or ``block_time`` after the first arrived."""
        while True:
            await self._have_pending.wait()
            if len(self.pending) < self.block_size:
                try:
                    await asyncio.wait_for(self._full.wait(), timeout=self.block_time)
                except TimeoutError:
                    pass
            try:
                await self.cut()
            except Exception as exc:  # e.g. the ledger disk is full: stop serving rather than lie
                self.fatal = f"committer failed: {type(exc).__name__}: {exc}"
                raise

    async def cut(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[: self.block_size], self.pending[self.block_size :]
            self.commit_block(batch)
        self._have_pending.clear()
        self._full.clear()
        signal, self.block_signal = self.block_signal, asyncio.Event()
        signal.set()

    async def wait_block(self, height: int, max_wait: float) -> None:
        """Return once the ledger is taller than ``height``, or after ``max_wait`` seconds."""
        if self.ledger.height > height:
            return
        try:
            async with asyncio.timeout(max_wait):
                await self.block_signal.wait()
        except TimeoutError:
            pass

    # -- validation and commit -----------------------------------------------------------------

    def commit_block(self, batch: list[TxInfo]) -> None:
        ledger = self.ledger
        block = ledger.height
        state = ledger.state
        index = ledger.index
        seen: set[str] = set()
        touched: set[str] = set()
        lines: list[dict[str, Any]] = []
        now_iso = _iso(time.time())
        faults = self.faults
        for n, info in enumerate(batch):
            code = info.code
            if code == TX.VALID:
                if info.tx_id in index or info.tx_id in seen:
                    code = TX.DUPLICATE_TXID
                elif info.channel != CHANNEL:
                    code = TX.TARGET_CHAIN_NOT_FOUND
                elif info.chaincode != cc.CHAINCODE_NAME:
                    code = TX.INVALID_CHAINCODE
                elif not info.endorsed_by.issuperset(ENDORSING_ORGS) or self.roll(faults.policy_failure):
                    code = TX.ENDORSEMENT_POLICY_FAILURE
                elif self.roll(faults.mvcc):
                    code = TX.MVCC_READ_CONFLICT
                else:
                    for key, ver in info.reads:
                        if key in touched:
                            code = TX.MVCC_READ_CONFLICT
                            break
                        cur = state.get(key)
                        current = (cur[1], cur[2]) if cur is not None else None
                        if current != ver:
                            code = TX.MVCC_READ_CONFLICT
                            break
            if info.tx_id:
                seen.add(info.tx_id)
            valid = code == TX.VALID
            if valid:
                touched.update(k for k, _ in info.writes)
            lines.append(self._line(info, CODE_NAMES.get(code, str(code)), block, n, now_iso, valid))
        ledger.commit(block, lines)
        self.counters["blocks"] += 1
        self.counters["committed"] += len(batch)
        for info in batch:
            self.endorsed.pop(info.tx_id, None)
            waiters = self.waiters.pop(info.tx_id, None)
            if waiters:
                loc = index[info.tx_id]
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(loc)

    @staticmethod
    def _line(info: TxInfo, code: str, block: int, n: int, now_iso: str, valid: bool) -> dict[str, Any]:
        ev = info.event
        event = (
            {"name": ev.event_name, "payload": ev.payload.decode("utf-8", "replace")}
            if ev is not None
            else None
        )
        creator = info.creator
        return {
            "tx_id": info.tx_id,
            "block": block,
            "tx_num": n,
            "validation_code": code,
            "channel": info.channel,
            "chaincode": info.chaincode,
            "function": info.args[0].decode("utf-8", "replace") if info.args else "",
            "args": [a.decode("utf-8", "replace") for a in info.args[1:]],
            "mspid": info.mspid,
            "role": creator.role if creator is not None else None,
            "creator_fingerprint": creator.fingerprint if creator is not None else None,
            "timestamp": _iso(info.timestamp),
            "committed_at": now_iso,
            "event": event,
            "events": [event] if event is not None and valid else [],
            "writes": {k: (v.decode("utf-8", "replace") if v is not None else None) for k, v in info.writes}
            if valid
            else {},
        }


