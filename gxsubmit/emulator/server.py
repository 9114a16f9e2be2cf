"""The Fabric Gateway emulator: the five Gateway RPCs and the peer's DeliverFiltered over grpc.aio.

It plays gateway peer (Org1), a second endorsing peer (Org2), the orderer and the committer. All
state lives on one asyncio loop in a background thread, so nothing needs locks; the block cutter
is a task on that loop. Deliver and DeliverWithPrivateData (full blocks) are not served: the ledger
keeps no envelopes, so those methods answer UNIMPLEMENTED as for any unknown method.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import resource
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import grpc
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import NameOID
from fabric_protos.common import common_pb2
from fabric_protos.gateway import gateway_pb2, gateway_pb2_grpc
from fabric_protos.msp import identities_pb2
from fabric_protos.peer import (
    chaincode_event_pb2,
    proposal_response_pb2,
    transaction_pb2,
)
from google.protobuf import any_pb2  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.rpc import status_pb2
from grpc_status import rpc_status

from gxsubmit.emulator import chaincode as cc
from gxsubmit.emulator import wire
from gxsubmit.emulator.deliver import DEFAULT_TIME_WINDOW_S, FilteredBlocks, Seek, parse_seek
from gxsubmit.emulator.faults import Faults
from gxsubmit.emulator.hostile import HostilePeer, add_gateway_servicer
from gxsubmit.emulator.ledger import Ledger, TxLocation
from gxsubmit.emulator.validation import (
    CODE_NAMES,
    TX,
    CreatorInvalid,
    EndorserError,
    IdentityRegistry,
    ParsedProposal,
    TxInfo,
    UnpackError,
    parse_envelope,
    proposal_hash,
    unpack_proposal,
    validate_proposal,
    verify_signature,
)

__all__ = ["CHANNEL", "ENDORSING_ORGS", "Emulator", "EmulatorError"]

CHANNEL = "gxchannel"
#: the query system chaincode; only GetTransactionByID is served (the worker asks it about lost tx ids)
QSCC = "qscc"
ENDORSING_ORGS = ("Org1MSP", "Org2MSP")  # the chaincode's MAJORITY policy needs both
PEER_ADDRESSES = {"Org1MSP": "peer0.org1.example.com:7051", "Org2MSP": "peer0.org2.example.com:9051"}
ORDERER_ADDRESS, ORDERER_MSP = "orderer.example.com:7050", "OrdererMSP"
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256_HALF_N = _P256_N >> 1
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_READERS_DENIED = (
    "failed evaluating policy on signed data during check policy [/Channel/Application/Readers]: "
    "[implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy requires 1 of the "
    "'Readers' sub-policies to be satisfied]"
)


class EmulatorError(Exception):
    """The emulator cannot start (bad wallet, port in use, unreadable ledger)."""


# ---------------------------------------------------------------------------------------------
# Endorsing peers' identities (persisted next to the ledger so envelopes survive a restart)


@dataclasses.dataclass(frozen=True)
class _Endorser:
    mspid: str
    address: str
    identity: bytes  # serialized msp.SerializedIdentity
    key: ec.EllipticCurvePrivateKey

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA-SHA256, normalised to low S as Fabric's BCCSP does."""
        sig = self.key.sign(data, _ECDSA_SHA256)
        r, s = utils.decode_dss_signature(sig)
        return sig if s <= _P256_HALF_N else utils.encode_dss_signature(r, _P256_N - s)


def _new_peer_cert(mspid: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    host = PEER_ADDRESSES[mspid].split(":")[0]
    org = host.split(".", 1)[1]
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "peer"),
            x509.NameAttribute(NameOID.COMMON_NAME, host),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_endorsers(path: Path) -> dict[str, _Endorser]:
    doc: dict[str, dict[str, str]] = {}
    if path.exists():
        doc = json.loads(path.read_text())
    changed = False
    out: dict[str, _Endorser] = {}
    for mspid in ENDORSING_ORGS:
        entry = doc.get(mspid)
        if entry is None:
            key = ec.generate_private_key(ec.SECP256R1())
            entry = {
                "cert": _new_peer_cert(mspid, key).decode(),
                "key": key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
            }
            doc[mspid] = entry
            changed = True
        loaded = serialization.load_pem_private_key(entry["key"].encode(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise EmulatorError(f"{path}: endorser key of {mspid} is not an EC key")
        ident = identities_pb2.SerializedIdentity(mspid=mspid, id_bytes=entry["cert"].encode())
        out[mspid] = _Endorser(mspid, PEER_ADDRESSES[mspid], ident.SerializeToString(), loaded)
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    return out


# ---------------------------------------------------------------------------------------------
# Errors as the gateway sends them


def _detail(address: str, msp_id: str, message: str) -> gateway_pb2.ErrorDetail:
    return gateway_pb2.ErrorDetail(address=address, msp_id=msp_id, message=message)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[gateway_pb2.ErrorDetail] = ()):
        super().__init__(message)
        self.code, self.message, self.details = code, message, list(details)


async def _send_abort(context: grpc.aio.ServicerContext[Any, Any], err: _Abort) -> NoReturn:
    if not err.details:
        await context.abort(err.code, err.message)
    packed = []
    for d in err.details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    st = status_pb2.Status(code=err.code.value[0], message=err.message, details=packed)
    await context.abort_with_status(rpc_status.to_status(st))
    raise AssertionError("unreachable")  # abort_with_status raises


def _orderers_unavailable() -> _Abort:
    return _Abort(
        grpc.StatusCode.UNAVAILABLE,
        "no orderers could successfully process transaction",
        [
            _detail(
                ORDERER_ADDRESS,
                ORDERER_MSP,
                "rpc error: code = Unavailable desc = connection error: connection refused",
            )
        ],
    )


def _expire(fut: asyncio.Future[TxLocation]) -> None:
    if not fut.done():
        fut.set_exception(_Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded"))


def _process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# The peer/orderer/committer state machine


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


# ---------------------------------------------------------------------------------------------
# The gRPC service


class _Gateway(gateway_pb2_grpc.GatewayServicer):  # type: ignore[misc]
    def __init__(self, core: _Core) -> None:
        self.core = core
        self.local = core.endorsers["Org1MSP"]
        self.hostile = HostilePeer(core.rng, core.counters)

    async def _gate(self, rpc: str) -> None:
        core = self.core
        core.counters[f"rpc_{rpc}"] += 1
        f = core.faults
        if core.fatal is not None:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, core.fatal)
        if f.in_outage():
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; gateway unavailable"
            )
        delay = f.latency_for(rpc, core.rng)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _hang(self, context: grpc.aio.ServicerContext[Any, Any], cap: float) -> None:
        remaining = context.time_remaining()
        await asyncio.sleep(min(cap, remaining + 0.2) if remaining is not None else cap)

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], err: _Abort) -> NoReturn:
        self.core.counters["rejected"] += 1
        self.core.counters[f"rejected_{err.code.name}"] += 1
        await _send_abort(context, err)

    def _peer_detail(self, message: str) -> gateway_pb2.ErrorDetail:
        return _detail(self.local.address, self.local.mspid, message)

    # -- Evaluate ----------------------------------------------------------------------------

    async def Evaluate(
        self, request: gateway_pb2.EvaluateRequest, context: Any
    ) -> gateway_pb2.EvaluateResponse:
        try:
            await self._gate("Evaluate")
            resp = self._evaluate(request)
            return self.hostile.evaluate(resp) if self.core.roll(self.core.faults.hostile) else resp
        except _Abort as err:
            await self._fail(context, err)

    def _evaluate(self, request: gateway_pb2.EvaluateRequest) -> gateway_pb2.EvaluateResponse:
        try:
            pp = unpack_proposal(request.proposed_transaction)
        except UnpackError as exc:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"failed to unpack transaction proposal: {exc}"
            ) from None
        unknown = [o for o in request.target_organizations if o not in ENDORSING_ORGS]
        if unknown:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"no endorsing peers found for org(s): {unknown}"
            )
        try:
            _info, res = self.core.simulate(pp)
        except EndorserError as exc:
            d = self._peer_detail(exc.message)
            if exc.no_response:
                code = (
                    grpc.StatusCode.UNAVAILABLE
                    if "expired" in exc.message or "timestamp" in exc.message
                    else grpc.StatusCode.ABORTED
                )
                raise _Abort(
                    code, "failed to evaluate transaction, see attached details for more info", [d]
                ) from None
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"evaluate call to endorser returned error: {exc.message}",
                [d],
            ) from None
        except cc.ChaincodeError as exc:
            msg = f"chaincode response {exc.status}, {exc.message}"
            raise _Abort(
                grpc.StatusCode.UNKNOWN,
                f"evaluate call to endorser returned error: {msg}",
                [self._peer_detail(msg)],
            ) from None
        return gateway_pb2.EvaluateResponse(
            result=proposal_response_pb2.Response(status=200, payload=res.payload)
        )

    # -- Endorse -----------------------------------------------------------------------------

    async def Endorse(self, request: gateway_pb2.EndorseRequest, context: Any) -> gateway_pb2.EndorseResponse:
        core = self.core
        try:
            await self._gate("Endorse")
            if core.roll(core.faults.endorse_unavailable):
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE, "failed to find any endorsing peers for the transaction"
                )
            if core.roll(core.faults.endorse_timeout):
                await self._hang(context, 10.0)
                raise _Abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "endorsement timeout expired while collecting first endorsement",
                )
            resp = self._endorse(request)
            return self.hostile.endorse(resp) if core.roll(core.faults.hostile) else resp
        except _Abort as err:
            await self._fail(context, err)

    def _endorse(self, request: gateway_pb2.EndorseRequest) -> gateway_pb2.EndorseResponse:
        core = self.core
        try:
            pp = unpack_proposal(request.proposed_transaction)
        except UnpackError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        orgs = list(dict.fromkeys(request.endorsing_organizations)) or list(ENDORSING_ORGS)
        unknown = [o for o in orgs if o not in ENDORSING_ORGS]
        if unknown:
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE, f"failed to find any endorsing peers for org(s): {unknown}"
            )
        if core.faults.endorse_mismatch_in_flight and any(i.tx_id == pp.tx_id for i in core.pending):
            raise _Abort(grpc.StatusCode.ABORTED,
                         "failed to assemble transaction: ProposalResponsePayloads do not match")
        try:
            info, res = core.simulate(pp)
        except EndorserError as exc:
            raise _Abort(
                grpc.StatusCode.ABORTED,
                "failed to endorse transaction, see attached details for more info",
                [self._peer_detail(exc.message)],
            ) from None
        except cc.ChaincodeError as exc:
            raise _Abort(
                grpc.StatusCode.ABORTED,
                "failed to endorse transaction, see attached details for more info",
                [self._peer_detail(f"chaincode response {exc.status}, {exc.message}")],
            ) from None
        payload = core.prepare(pp, info, res, orgs)
        core.counters["endorsed"] += 1
        return gateway_pb2.EndorseResponse(prepared_transaction=common_pb2.Envelope(payload=payload))

    # -- Submit ------------------------------------------------------------------------------

    async def Submit(self, request: gateway_pb2.SubmitRequest, context: Any) -> gateway_pb2.SubmitResponse:
        core = self.core
        try:
            await self._gate("Submit")
            if not request.HasField("prepared_transaction"):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "a prepared transaction is required")
            env = request.prepared_transaction
            if not env.signature:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "prepared transaction must be signed")
            if request.channel_id != CHANNEL:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"channel '{request.channel_id}' not found")
            if core.roll(core.faults.submit_unavailable):
                raise _orderers_unavailable()
            if core.roll(core.faults.submit_timeout):
                await self._hang(context, 10.0)
                raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded")
            info = self._check_envelope(request, env)
            lost = core.roll(core.faults.submit_lost_ack)
            core.order(info)
            core.counters["submitted"] += 1
            if lost:
                core.counters["lost_acks"] += 1
                raise _orderers_unavailable()
            return gateway_pb2.SubmitResponse()
        except _Abort as err:
            await self._fail(context, err)

    def _check_envelope(self, request: gateway_pb2.SubmitRequest, env: common_pb2.Envelope) -> TxInfo:
        """What the orderer's broadcast filters check, plus the parse the committer would do."""
        core = self.core
        limit = core.faults.orderer_max_bytes
        if limit and env.ByteSize() > limit:
            raise _Abort(
                grpc.StatusCode.ABORTED,
                "received unsuccessful response from orderer: status=REQUEST_ENTITY_TOO_LARGE, "
                f"info=message payload is {env.ByteSize()} bytes and exceeds maximum message size "
                f"{limit} bytes",
            )
        cached = core.endorsed.get(request.transaction_id)
        if cached is not None and cached.payload == env.payload:
            info = cached
        else:
            info = parse_envelope(env, core.registry, core.endorser_keys)
            if info.code == TX.BAD_PAYLOAD and not info.tx_id:
                raise _Abort(
                    grpc.StatusCode.ABORTED,
                    "received unsuccessful response from orderer: status=BAD_REQUEST, "
                    "info=bad payload: could not unmarshal envelope payload",
                )
        creator = info.creator
        problem = ""
        if creator is None:
            problem = (
                "implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy "
                "requires 1 of the 'Writers' sub-policies to be satisfied"
            )
        elif creator.expired(time.time()):
            problem = "broadcast client identity expired"
        elif not verify_signature(creator.public_key, env.payload, env.signature):
            problem = (
                "implicit policy evaluation failed - 0 sub-policies were satisfied, but this policy "
                "requires 1 of the 'Writers' sub-policies to be satisfied"
            )
        if problem:
            if core.envelope_check == "orderer" or creator is None:
                raise _Abort(
                    grpc.StatusCode.ABORTED,
                    f"received unsuccessful response from orderer: status=FORBIDDEN, info={problem}",
                )
            info = dataclasses.replace(info, code=TX.BAD_CREATOR_SIGNATURE)
        return info

    # -- CommitStatus --------------------------------------------------------------------------

    def _check_signed(self, request_bytes: bytes, identity: bytes, signature: bytes) -> None:
        try:
            creator = self.core.registry.resolve(identity)
        except CreatorInvalid:
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, _READERS_DENIED) from None
        if not verify_signature(creator.public_key, request_bytes, signature):
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, _READERS_DENIED)

    async def CommitStatus(self, request: gateway_pb2.SignedCommitStatusRequest, context: Any) -> Any:
        core = self.core
        try:
            await self._gate("CommitStatus")
            if not request.request:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "a commit status request is required")
            try:
                req = gateway_pb2.CommitStatusRequest.FromString(request.request)
            except DecodeError as exc:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid status request: {exc}") from None
            self._check_signed(request.request, req.identity, request.signature)
            if req.channel_id != CHANNEL:
                raise _Abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"Failed to get policy manager for channel [{req.channel_id}]",
                )
            if core.roll(core.faults.commit_status_unavailable):
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "failed to connect to ledger: peer unavailable")
            loc = core.ledger.index.get(req.transaction_id)
            if loc is None:
                loc = await self._wait_commit(req.transaction_id, context)
            resp = gateway_pb2.CommitStatusResponse(result=loc.code, block_number=loc.block)
            return self.hostile.commit_status(resp) if core.roll(core.faults.hostile) else resp
        except _Abort as err:
            await self._fail(context, err)

    async def _wait_commit(self, tx_id: str, context: Any) -> TxLocation:
        """Park on a future the committer resolves; one timer enforces the call's deadline."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[TxLocation] = loop.create_future()
        waiters = self.core.waiters
        lst = waiters.get(tx_id)
        if lst is None:
            waiters[tx_id] = [fut]
        else:
            lst.append(fut)
        remaining = context.time_remaining()
        timer = loop.call_later(max(remaining, 0.0), _expire, fut) if remaining is not None else None
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.cancel()
            lst = waiters.get(tx_id)
            if lst is not None:  # still there: we were not resolved by a block (deadline, cancel)
                if fut in lst:
                    lst.remove(fut)
                if not lst:
                    del waiters[tx_id]

    # -- ChaincodeEvents -------------------------------------------------------------------------

    def _events_start(
        self, request: gateway_pb2.SignedChaincodeEventsRequest
    ) -> tuple[str, int, tuple[int, int] | None]:
        """(chaincode, first block, (block, tx_num) to skip through), per the gateway's rules."""
        ledger = self.core.ledger
        if not request.request:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "a chaincode events request is required")
        try:
            req = gateway_pb2.ChaincodeEventsRequest.FromString(request.request)
        except DecodeError as exc:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid chaincode events request: {exc}"
            ) from None
        self._check_signed(request.request, req.identity, request.signature)
        if req.channel_id != CHANNEL:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"channel {req.channel_id} not found")
        loc = ledger.index.get(req.after_transaction_id) if req.after_transaction_id else None
        if loc is not None:
            return req.chaincode_id, loc.block, (loc.block, loc.tx_num)
        kind = req.start_position.WhichOneof("Type") if req.HasField("start_position") else None
        if kind in (None, "next_commit"):
            return req.chaincode_id, ledger.height, None
        if kind == "specified":
            return req.chaincode_id, int(req.start_position.specified.number), None
        type_name = {"newest": "SeekPosition_Newest", "oldest": "SeekPosition_Oldest"}.get(kind, str(kind))
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid start position type: *orderer.{type_name}")

    async def ChaincodeEvents(
        self, request: gateway_pb2.SignedChaincodeEventsRequest, context: Any
    ) -> AsyncIterator[gateway_pb2.ChaincodeEventsResponse]:
        core = self.core
        ledger = core.ledger
        try:
            await self._gate("ChaincodeEvents")
            chaincode_id, block, skip_through = self._events_start(request)
        except _Abort as err:
            await self._fail(context, err)
        while True:
            while block < ledger.height:
                recs = ledger.block_events[block]
                events = [
                    chaincode_event_pb2.ChaincodeEvent(
                        chaincode_id=r.chaincode, tx_id=r.tx_id, event_name=r.name, payload=r.payload
                    )
                    for r in recs
                    if r.chaincode == chaincode_id
                    and (skip_through is None or block != skip_through[0] or r.tx_num > skip_through[1])
                ]
                if events:
                    yield gateway_pb2.ChaincodeEventsResponse(events=events, block_number=block)
                block += 1
            await core.wait_block(block, 0.5)  # the timeout bounds how late an outage is noticed
            if core.faults.in_outage():
                await self._fail(context, _Abort(grpc.StatusCode.UNAVAILABLE, "gateway unavailable"))


# ---------------------------------------------------------------------------------------------
# The peer's Deliver service (DeliverFiltered only)


_STATUS = {code: wire.deliver_status(code) for code in common_pb2.Status.values()}


def _raw(data: bytes) -> bytes:
    return data


def _client_cert_hash(context: Any) -> bytes:
    """SHA-256 of the DER client certificate of this TLS session (b"" if the client sent none)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return b""
    cert = x509.load_pem_x509_certificate(pems[0])
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


class _Deliver:
    """``/protos.Deliver/DeliverFiltered`` as a Fabric 2.5 peer serves it next to the Gateway.

    Each Envelope read from the stream is a seek; its blocks are sent in order, then SUCCESS, then
    the next seek is read. A refused seek (see ``deliver.parse_seek``), FAIL_IF_NOT_READY past the
    head or an identity expiring mid-seek is answered with that status and ends the RPC (gRPC OK),
    as the peer does. Outages and a failed committer end it with gRPC UNAVAILABLE instead.
    Responses go out pre-serialized: a block is encoded once for every stream that follows the head.
    """

    def __init__(self, gateway: _Gateway, *, bind_tls: bool = False) -> None:
        self.gateway = gateway
        self.core = gateway.core
        self.bind_tls = bind_tls
        self.blocks = FilteredBlocks(gateway.core.ledger, CHANNEL)
        tw = gateway.core.time_window_s
        self.time_window_s = tw if tw is not None else DEFAULT_TIME_WINDOW_S

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "protos.Deliver",
            {
                "DeliverFiltered": grpc.stream_stream_rpc_method_handler(
                    self.DeliverFiltered,
                    request_deserializer=common_pb2.Envelope.FromString,
                    response_serializer=_raw,
                )
            },
        )

    async def _unavailable(self, context: Any) -> NoReturn:
        core = self.core
        message = core.fatal or "failed to connect to all addresses; peer unavailable"
        await self.gateway._fail(context, _Abort(grpc.StatusCode.UNAVAILABLE, message))

    async def DeliverFiltered(
        self, requests: AsyncIterator[common_pb2.Envelope], context: Any
    ) -> AsyncIterator[bytes]:
        core = self.core
        ledger = core.ledger
        faults = core.faults
        try:
            await self.gateway._gate("DeliverFiltered")
        except _Abort as err:
            await self.gateway._fail(context, err)
        async for env in requests:
            if faults.in_outage() or core.fatal is not None:
                await self._unavailable(context)
            seek = parse_seek(
                env,
                registry=core.registry,
                channel=CHANNEL,
                height=ledger.height,
                now=time.time(),
                time_window_s=self.time_window_s,
                tls_cert_hash=_client_cert_hash(context) if self.bind_tls else None,
            )
            if not isinstance(seek, Seek):
                core.counters[f"deliver_status_{seek}"] += 1
                yield _STATUS[seek]
                return
            core.counters["deliver_seeks"] += 1
            status = common_pb2.SUCCESS
            number = seek.start
            while True:
                if seek.fail_if_not_ready and number > ledger.height - 1:
                    status = common_pb2.NOT_FOUND
                    break
                if seek.not_found:
                    status = common_pb2.NOT_FOUND
                    break
                while number >= ledger.height:
                    await core.wait_block(number, 0.5)  # the timeout bounds how late an outage is noticed
                    if faults.in_outage() or core.fatal is not None:
                        await self._unavailable(context)
                if faults.in_outage() or core.fatal is not None:
                    await self._unavailable(context)
                if seek.creator.expired(time.time()):
                    status = common_pb2.FORBIDDEN
                    break
                core.counters["deliver_blocks"] += 1
                data = self.blocks.get(number)
                if core.roll(faults.hostile):
                    lies, then_real = self.gateway.hostile.block(data, number, CHANNEL)
                    for lie in lies:
                        yield lie
                    if then_real:
                        yield data
                else:
                    yield data
                if number == seek.stop:
                    break
                number += 1
            core.counters[f"deliver_status_{status}"] += 1
            yield _STATUS[status]
            if status != common_pb2.SUCCESS:
                return


# ---------------------------------------------------------------------------------------------
# The public object


class Emulator:
    """A Fabric Gateway emulator serving on a background thread with its own event loop."""

    def __init__(
        self,
        *,
        wallet: Path,
        ledger: Path,
        listen: str = "127.0.0.1:0",
        insecure: bool = True,
        block_time: float = 0.25,
        block_size: int = 500,
        faults: Faults | None = None,
        msp_ids: Sequence[str] = ("Org1MSP",),
        fsync: bool = False,
        time_window_s: float | None = None,
        envelope_check: str = "orderer",
        seed: int | None = None,
        client_tls: bool = False,
    ) -> None:
        if block_size < 1 or block_time <= 0:
            raise EmulatorError("block size must be >= 1 and block time > 0")
        if client_tls and insecure:
            raise EmulatorError("mutual TLS (client_tls) needs TLS: not with insecure")
        if envelope_check not in ("orderer", "committer"):
            raise EmulatorError("envelope_check must be 'orderer' or 'committer'")
        self.wallet = Path(wallet)
        self.ledger_path = Path(ledger)
        self.listen = listen
        self.insecure = insecure
        self.block_time = block_time
        self.block_size = block_size
        self.faults = faults if faults is not None else Faults()
        self.msp_ids = tuple(msp_ids)
        self.fsync = fsync
        self.time_window_s = time_window_s
        self.envelope_check = envelope_check
        #: require a client TLS certificate (signed by the wallet's tlsca-cert) and check that deliver
        #: seeks are bound to it (ChannelHeader.tls_cert_hash), as a peer with clientAuthRequired does
        self.client_tls = client_tls
        self._rng = random.Random(seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._core: _Core | None = None
        self._cpu_clock: int | None = None
        self._cpu_final: float | None = None
        self._proc_cpu_start: float | None = None
        self._proc_cpu_final: float | None = None
        self.port = 0
        self.replayed = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def _load_cas(self) -> list[x509.Certificate]:
        path = self.wallet / "ca-cert"
        try:
            return x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            raise EmulatorError(f"{path}: {exc.strerror or exc}") from None
        except ValueError:
            raise EmulatorError(f"{path}: not a PEM certificate") from None

    def _credentials(self) -> grpc.ServerCredentials | None:
        if self.insecure:
            return None
        try:
            cert = (self.wallet / "server-cert").read_bytes()
            key = (self.wallet / "server-key").read_bytes()
        except OSError as exc:
            raise EmulatorError(f"TLS: {exc.filename}: {exc.strerror}") from None
        if not self.client_tls:
            return grpc.ssl_server_credentials([(key, cert)])
        try:
            client_ca = (self.wallet / "tlsca-cert").read_bytes()
        except OSError as exc:
            raise EmulatorError(f"TLS: {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=True
        )

    def start(self) -> int:
        """Start serving; returns the bound port. Raises EmulatorError if it cannot start."""
        if self._thread is not None:
            raise EmulatorError("already started")
        cas = self._load_cas()
        creds = self._credentials()
        self._proc_cpu_start = _process_cpu()
        self._thread = threading.Thread(target=self._run, args=(cas, creds), name="gx-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=60):
            raise EmulatorError("emulator did not start within 60 s")
        if self._error is not None:
            raise EmulatorError(str(self._error)) from self._error
        return self.port

    def _run(self, cas: list[x509.Certificate], creds: grpc.ServerCredentials | None) -> None:
        loop = uvloop.new_event_loop()  # ~0.1 ms less CPU per committed tx than asyncio's loop (grpc.aio)
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(cas, creds))
        except BaseException as exc:  # reported to start() or kept for stats
            self._error = exc
        finally:
            self._cpu_final = time.thread_time()
            self._ready.set()
            loop.close()

    async def _main(self, cas: list[x509.Certificate], creds: grpc.ServerCredentials | None) -> None:
        self._cpu_clock = time.pthread_getcpuclockid(threading.get_ident())
        ledger = Ledger(self.ledger_path, fsync=self.fsync, code_values=dict(TX.items()))
        self.replayed = ledger.open()
        endorsers = _load_endorsers(self.ledger_path.with_name(self.ledger_path.name + ".endorsers"))
        core = _Core(
            ledger=ledger,
            registry=IdentityRegistry({m: cas for m in self.msp_ids}),
            endorsers=endorsers,
            faults=self.faults,
            rng=self._rng,
            block_time=self.block_time,
            block_size=self.block_size,
            time_window_s=self.time_window_s,
            envelope_check=self.envelope_check,
        )
        self._core = core
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.http2.max_pings_without_data", 0),
            ]
        )
        gateway = _Gateway(core)
        add_gateway_servicer(gateway, server)  # the generated registration, able to send raw bytes
        server.add_generic_rpc_handlers((_Deliver(gateway, bind_tls=self.client_tls).handler(),))
        try:
            port = (
                server.add_secure_port(self.listen, creds)
                if creds is not None
                else server.add_insecure_port(self.listen)
            )
        except RuntimeError as exc:
            raise EmulatorError(f"cannot listen on {self.listen}: {exc}") from None
        if not port:
            raise EmulatorError(f"cannot listen on {self.listen}")
        await server.start()
        cutter = asyncio.create_task(core.run_cutter())
        self._stop_event = asyncio.Event()
        self.port = port
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await server.stop(0.5)
            cutter.cancel()
            try:
                await cutter
            except (asyncio.CancelledError, Exception):
                pass  # a committer failure is already in core.fatal
            try:
                if core.fatal is None:
                    await core.cut()  # transactions the "orderer" accepted still make it into a block
            finally:
                ledger.close()

    def stop(self) -> None:
        """Stop serving (in-flight calls get 0.5 s), cut the last block, close the ledger."""
        loop, ev, thread = self._loop, self._stop_event, self._thread
        if thread is None:
            return
        if loop is not None and ev is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:
                pass
        thread.join(timeout=30)
        self._thread = None
        self._proc_cpu_final = _process_cpu()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation ---------------------------------------------------------------------------

    def process_cpu_seconds(self) -> float:
        """CPU (user + system) of the whole process since ``start()``, until ``stop()``.

        Run as its own process (``gxsubmit emulator``, the bench) this is the emulator's full cost:
        the event-loop thread plus gRPC core's poller and executor threads (about a quarter on top
        of the loop). Embedded in another program it also counts that program's threads.
        """
        if self._proc_cpu_start is None:
            return 0.0
        end = self._proc_cpu_final if self._proc_cpu_final is not None else _process_cpu()
        return max(0.0, end - self._proc_cpu_start)

    def cpu_seconds(self) -> float:
        """CPU time of the emulator's event-loop thread (all Python request handling runs there)."""
        if self._cpu_final is not None and (self._thread is None or not self._thread.is_alive()):
            return self._cpu_final
        if self._cpu_clock is None:
            return 0.0
        try:
            return time.clock_gettime(self._cpu_clock)
        except OSError:
            return self._cpu_final or 0.0

    def stats(self) -> dict[str, Any]:
        """Counters: committed (all codes), valid, by_code, rejected (RPC errors), blocks, height, CPU.

        ``deliver_seeks``: DeliverFiltered seeks accepted (start position fixed); ``deliver_blocks``:
        filtered blocks sent over all streams.

        ``cpu_s``: whole-process CPU since start (see ``process_cpu_seconds``); ``loop_cpu_s``: the
        event-loop thread alone; ``cpu_ms_per_committed``: ``cpu_s`` per committed transaction.
        """
        core = self._core
        if core is None:
            return {"committed": 0, "valid": 0, "rejected": 0, "cpu_s": 0.0, "loop_cpu_s": 0.0}
        c = core.counters
        by_code = dict(core.ledger.counts)
        cpu = self.process_cpu_seconds()
        committed = c["committed"]
        return {
            "committed": committed,
            "valid": by_code.get("VALID", 0),
            "by_code": by_code,
            "rejected": c["rejected"],
            "rejected_by_code": {k[9:]: v for k, v in c.items() if k.startswith("rejected_")},
            "endorsed": c["endorsed"],
            "submitted": c["submitted"],
            "lost_acks": c["lost_acks"],
            "rpcs": {k[4:]: v for k, v in c.items() if k.startswith("rpc_")},
            "blocks": c["blocks"],
            "deliver_seeks": c["deliver_seeks"],
            "deliver_blocks": c["deliver_blocks"],
            "hostile": c["hostile"],
            "hostile_by_kind": {k[8:]: v for k, v in c.items() if k.startswith("hostile_")},
            "height": core.ledger.height,
            "pending": len(core.pending),
            "replayed": self.replayed,
            "fatal": core.fatal,
            "cpu_s": cpu,
            "loop_cpu_s": self.cpu_seconds(),
            "cpu_ms_per_committed": (cpu * 1000.0 / committed) if committed else None,
        }
