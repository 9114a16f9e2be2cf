"""A model of the GX chaincode (``gxtv3``): roles, argument counts and simple versioned effects.

Each function reads and writes only the keys of the entities it names, so unrelated transactions
never conflict while two transactions on the same key in one block do (MVCC, as on Fabric).
Reads see committed state only (Fabric's GetState does not see the transaction's own writes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import orjson

__all__ = [
    "CHAINCODE_NAME",
    "CHAINCODE_VERSION",
    "FUNCTIONS",
    "GENESIS_AMOUNT",
    "ChaincodeError",
    "SimResult",
    "Simulator",
    "invoke",
]

CHAINCODE_NAME = "gxtv3"
CHAINCODE_VERSION = "3.0"
GENESIS_AMOUNT = Decimal(1000)

SUPER_ADMIN, ADMIN, PARTNER = "gx_super_admin", "gx_admin", "gx_partner_api"

#: committed state: key -> (value, block number, tx number in block)
StateView = Mapping[str, tuple[bytes, int, int]]


class ChaincodeError(Exception):
    """The chaincode returned an error response (status >= 400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class SimResult:
    payload: bytes
    reads: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    writes: dict[str, bytes | None] = field(default_factory=dict)
    event_name: str | None = None
    event_payload: bytes = b""


class Simulator:
    """A transaction simulator over committed state that records the read and write sets."""

    __slots__ = ("reads", "state", "writes")

    def __init__(self, state: StateView) -> None:
        self.state = state
        self.reads: dict[str, tuple[int, int] | None] = {}
        self.writes: dict[str, bytes | None] = {}

    def get(self, key: str) -> bytes | None:
        entry = self.state.get(key)
        if key not in self.reads:
            self.reads[key] = (entry[1], entry[2]) if entry is not None else None
        return entry[0] if entry is not None else None

    def put(self, key: str, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: str) -> None:
        self.writes[key] = None


def _j(obj: object) -> bytes:
    """Compact JSON with sorted keys (non-ASCII as UTF-8, as a Go or Node contract writes it)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _amount(text: str, what: str = "amount") -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ChaincodeError(400, f"invalid {what}: {text!r}") from None
    if not value.is_finite() or value <= 0:
        raise ChaincodeError(400, f"invalid {what}: {text!r} must be a positive number")
    return value


def _balance(sim: Simulator, user: str) -> Decimal:
    raw = sim.get(f"balance~{user}")
    return Decimal(raw.decode()) if raw is not None else Decimal(0)


def _put_balance(sim: Simulator, user: str, value: Decimal) -> None:
    sim.put(f"balance~{user}", str(value).encode())


Handler = Callable[[Simulator, list[str], str], tuple[object, str, object]]  # (result, event name, event)


def _create_user(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    user, bio, country, age = a
    if not user:
        raise ChaincodeError(400, "userId must not be empty")
    try:
        age_n = int(age)
    except ValueError:
        raise ChaincodeError(400, f"invalid age: {age!r}") from None
    if not 0 <= age_n <= 150:
        raise ChaincodeError(400, f"invalid age: {age!r}")
    if sim.get(f"user~{user}") is not None:
        raise ChaincodeError(500, f"user {user} already exists")
    doc = {"userId": user, "biometricHash": bio, "countryCode": country, "age": age_n, "txId": tx_id}
    sim.put(f"user~{user}", _j(doc))
    return doc, "UserCreated", {"userId": user, "countryCode": country}


def _genesis(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    user, country = a
    if sim.get(f"genesis~{user}") is not None:
        raise ChaincodeError(500, f"genesis already distributed for user {user}")
    bal = _balance(sim, user) + GENESIS_AMOUNT
    sim.put(f"genesis~{user}", _j({"countryCode": country, "txId": tx_id}))
    _put_balance(sim, user, bal)
    doc = {"userId": user, "amount": str(GENESIS_AMOUNT), "balance": str(bal)}
    return doc, "GenesisDistributed", doc


def _transfer(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    src, dst, amount_s, tx_type, remark, idem = a
    amount = _amount(amount_s)
    if not src or not dst:
        raise ChaincodeError(400, "fromUserId and toUserId are required")
    if src == dst:
        raise ChaincodeError(400, "cannot transfer to the same account")
    if idem and sim.get(f"idem~{idem}") is not None:
        raise ChaincodeError(409, f"idempotency key {idem} has already been used")
    for who in (src, dst):
        if sim.get(f"frozen~{who}") is not None:
            raise ChaincodeError(500, f"wallet {who} is frozen")
    src_bal, dst_bal = _balance(sim, src), _balance(sim, dst)
    if src_bal < amount:
        raise ChaincodeError(500, f"insufficient balance: {src} has {src_bal}, needs {amount}")
    _put_balance(sim, src, src_bal - amount)
    _put_balance(sim, dst, dst_bal + amount)
    if idem:
        sim.put(f"idem~{idem}", tx_id.encode())
    doc = {
        "from": src,
        "to": dst,
        "amount": str(amount),
        "txType": tx_type or "AUTO",
        "remark": remark,
        "txId": tx_id,
    }
    return doc, "TransferCompleted", doc


def _freeze(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    user, reason = a
    sim.put(f"frozen~{user}", _j({"reason": reason, "txId": tx_id}))
    return {"userId": user, "frozen": True}, "WalletFrozen", {"userId": user, "reason": reason}


def _unfreeze(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    (user,) = a
    if sim.get(f"frozen~{user}") is None:
        raise ChaincodeError(500, f"wallet {user} is not frozen")
    sim.delete(f"frozen~{user}")
    return {"userId": user, "frozen": False}, "WalletUnfrozen", {"userId": user}


def _mint(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    user, amount_s, remark = a
    amount = _amount(amount_s)
    bal = _balance(sim, user) + amount
    _put_balance(sim, user, bal)
    doc = {"userId": user, "amount": str(amount), "balance": str(bal), "remark": remark}
    return doc, "TokensMinted", doc


def _country_data(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    try:
        rows = json.loads(a[0])
    except ValueError:
        raise ChaincodeError(400, "countriesData must be a JSON array") from None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and "countryCode" in r and "percentage" in r for r in rows
    ):
        raise ChaincodeError(400, "countriesData must be a JSON array of {countryCode, percentage}")
    sim.put("system~countries", a[0].encode())
    return {"countries": len(rows)}, "CountryDataInitialized", {"countries": len(rows)}


def _generic(function: str) -> Handler:
    """One key per entity (the first argument), blind write: no reads, hence no conflicts."""
    name = function.split(":", 1)[1]

    def handler(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
        key = f"{name}~{a[0]}" if a else f"system~{name}"
        doc = {"function": name, "args": a, "txId": tx_id}
        sim.put(key, _j(doc))
        return doc, name, {"function": name, "key": a[0] if a else ""}

    return handler


def _get_balance(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    return {"userId": a[0], "balance": str(_balance(sim, a[0]))}, "", None


def _get_user(sim: Simulator, a: list[str], tx_id: str) -> tuple[object, str, object]:
    raw = sim.get(f"user~{a[0]}")
    if raw is None:
        raise ChaincodeError(404, f"user {a[0]} does not exist")
    return json.loads(raw), "", None


@dataclass(frozen=True, slots=True)
class Spec:
    argc: int
    role: str | None  # None: any member
    handler: Handler


_SPECIFIC: dict[str, Spec] = {
    "IdentityContract:CreateUser": Spec(4, PARTNER, _create_user),
    "TokenomicsContract:TransferWithFees": Spec(6, ADMIN, _transfer),
    "TokenomicsContract:DistributeGenesis": Spec(2, ADMIN, _genesis),
    "TokenomicsContract:FreezeWallet": Spec(2, SUPER_ADMIN, _freeze),
    "TokenomicsContract:UnfreezeWallet": Spec(1, SUPER_ADMIN, _unfreeze),
    "TokenomicsContract:Mint": Spec(3, SUPER_ADMIN, _mint),
    "AdminContract:InitializeCountryData": Spec(1, SUPER_ADMIN, _country_data),
    "TokenomicsContract:GetBalance": Spec(1, None, _get_balance),
    "IdentityContract:GetUser": Spec(1, None, _get_user),
}

_GENERIC: dict[str, tuple[int, str]] = {
    "OrganizationContract:ProposeOrganization": (4, ADMIN),
    "OrganizationContract:EndorseMembership": (1, PARTNER),
    "OrganizationContract:ActivateOrganization": (1, PARTNER),
    "OrganizationContract:DefineAuthRule": (2, PARTNER),
    "OrganizationContract:InitiateMultiSigTx": (4, PARTNER),
    "OrganizationContract:ApproveMultiSigTx": (1, PARTNER),
    "OrganizationContract:ExecuteMultiSigTx": (1, PARTNER),
    "LoanPoolContract:ApplyForLoan": (3, PARTNER),
    "LoanPoolContract:ApproveLoan": (1, ADMIN),
    "GovernanceContract:SubmitProposal": (2, ADMIN),
    "GovernanceContract:VoteOnProposal": (2, PARTNER),
    "GovernanceContract:ExecuteProposal": (1, ADMIN),
    "AdminContract:BootstrapSystem": (0, SUPER_ADMIN),
    "AdminContract:UpdateSystemParameter": (2, ADMIN),
    "AdminContract:PauseSystem": (1, SUPER_ADMIN),
    "AdminContract:ResumeSystem": (0, SUPER_ADMIN),
    "AdminContract:AppointAdmin": (1, SUPER_ADMIN),
    "AdminContract:ActivateTreasuryAccount": (1, ADMIN),
    "TaxAndFeeContract:ApplyVelocityTax": (2, ADMIN),
    "GovernmentContract:CreateTreasury": (1, ADMIN),
    "GovernmentContract:OnboardTreasury": (2, SUPER_ADMIN),
    "GovernmentContract:CreateGovernmentAccount": (5, ADMIN),
    "GovernmentContract:AllocateFundsToAccount": (5, ADMIN),
    "GovernmentContract:DisburseFunds": (7, ADMIN),
    "GovernmentContract:SyncTreasuryBalance": (1, ADMIN),
}

FUNCTIONS: dict[str, Spec] = {
    **_SPECIFIC,
    **{fn: Spec(argc, role, _generic(fn)) for fn, (argc, role) in _GENERIC.items()},
}


def invoke(function: str, args: list[str], *, role: str | None, tx_id: str, state: StateView) -> SimResult:
    """Simulate one call; raises ChaincodeError as the contract API would report it."""
    spec = FUNCTIONS.get(function)
    if spec is None:
        raise ChaincodeError(500, f"You've asked to invoke a function that does not exist: {function}")
    if len(args) != spec.argc:
        raise ChaincodeError(400, f"Expected {spec.argc} parameters, but {len(args)} have been supplied")
    if spec.role is not None and role != spec.role:
        raise ChaincodeError(403, f"access denied: caller role {role or 'none'}, required {spec.role}")
    sim = Simulator(state)
    result, event_name, event = spec.handler(sim, args, tx_id)
    return SimResult(
        payload=_j(result),
        reads=sim.reads,
        writes=sim.writes,
        event_name=event_name or None,
        event_payload=_j(event) if event_name else b"",
    )
