"""The default catalogue against the GX chaincode model, argument building, and bad catalogue files.

The chaincode table below is typed in independently of gxsubmit/data/catalog.toml (from
docs/dev/contracts.md), so a wrong route in the TOML file fails here instead of on the ledger.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gxsubmit.catalog import Catalog, CatalogError, PayloadError, canonical_number, load_catalog

IDENTITY_ROLES = {
    "org1-super-admin": "gx_super_admin",
    "org1-admin": "gx_admin",
    "org1-partner-api": "gx_partner_api",
}

# command type -> (function, argc, role required by the chaincode)
CHAINCODE: dict[str, tuple[str, int, str]] = {
    "CREATE_USER": ("IdentityContract:CreateUser", 4, "gx_partner_api"),
    "TRANSFER_TOKENS": ("TokenomicsContract:TransferWithFees", 6, "gx_admin"),
    "Q_SEND_PAY": ("TokenomicsContract:TransferWithFees", 6, "gx_admin"),
    "DISTRIBUTE_GENESIS": ("TokenomicsContract:DistributeGenesis", 2, "gx_admin"),
    "FREEZE_WALLET": ("TokenomicsContract:FreezeWallet", 2, "gx_super_admin"),
    "UNFREEZE_WALLET": ("TokenomicsContract:UnfreezeWallet", 1, "gx_super_admin"),
    "MINT": ("TokenomicsContract:Mint", 3, "gx_super_admin"),
    "PROPOSE_ORGANIZATION": ("OrganizationContract:ProposeOrganization", 4, "gx_admin"),
    "ENDORSE_MEMBERSHIP": ("OrganizationContract:EndorseMembership", 1, "gx_partner_api"),
    "ACTIVATE_ORGANIZATION": ("OrganizationContract:ActivateOrganization", 1, "gx_partner_api"),
    "DEFINE_AUTH_RULE": ("OrganizationContract:DefineAuthRule", 2, "gx_partner_api"),
    "INITIATE_MULTISIG_TX": ("OrganizationContract:InitiateMultiSigTx", 4, "gx_partner_api"),
    "APPROVE_MULTISIG_TX": ("OrganizationContract:ApproveMultiSigTx", 1, "gx_partner_api"),
    "EXECUTE_MULTISIG_TX": ("OrganizationContract:ExecuteMultiSigTx", 1, "gx_partner_api"),
    "APPLY_FOR_LOAN": ("LoanPoolContract:ApplyForLoan", 3, "gx_partner_api"),
    "APPROVE_LOAN": ("LoanPoolContract:ApproveLoan", 1, "gx_admin"),
    "SUBMIT_PROPOSAL": ("GovernanceContract:SubmitProposal", 2, "gx_admin"),
    "CAST_VOTE": ("GovernanceContract:VoteOnProposal", 2, "gx_partner_api"),
    "VOTE_ON_PROPOSAL": ("GovernanceContract:VoteOnProposal", 2, "gx_partner_api"),
    "EXECUTE_PROPOSAL": ("GovernanceContract:ExecuteProposal", 1, "gx_admin"),
    "BOOTSTRAP_SYSTEM": ("AdminContract:BootstrapSystem", 0, "gx_super_admin"),
    "INITIALIZE_COUNTRY_DATA": ("AdminContract:InitializeCountryData", 1, "gx_super_admin"),
    "UPDATE_SYSTEM_PARAMETER": ("AdminContract:UpdateSystemParameter", 2, "gx_admin"),
    "PAUSE_SYSTEM": ("AdminContract:PauseSystem", 1, "gx_super_admin"),
    "RESUME_SYSTEM": ("AdminContract:ResumeSystem", 0, "gx_super_admin"),
    "APPOINT_ADMIN": ("AdminContract:AppointAdmin", 1, "gx_super_admin"),
    "ACTIVATE_TREASURY": ("AdminContract:ActivateTreasuryAccount", 1, "gx_admin"),
    "APPLY_VELOCITY_TAX": ("TaxAndFeeContract:ApplyVelocityTax", 2, "gx_admin"),
    "GOVT_CREATE_TREASURY": ("GovernmentContract:CreateTreasury", 1, "gx_admin"),
    "GOVT_ONBOARD_TREASURY": ("GovernmentContract:OnboardTreasury", 2, "gx_super_admin"),
    "GOVT_CREATE_ACCOUNT": ("GovernmentContract:CreateGovernmentAccount", 5, "gx_admin"),
    "GOVT_ALLOCATE_FUNDS": ("GovernmentContract:AllocateFundsToAccount", 5, "gx_admin"),
    "GOVT_DISBURSE_FUNDS": ("GovernmentContract:DisburseFunds", 7, "gx_admin"),
    "GOVT_SYNC_BALANCE": ("GovernmentContract:SyncTreasuryBalance", 1, "gx_admin"),
}

# Required payload fields per type (as gxsubmit/data/catalog.toml builds them); a tuple is
# "first, else second".
REQUIRED: dict[str, list[str | tuple[str, str]]] = {
    "CREATE_USER": ["userId", "biometricHash", ("nationality", "countryCode"), "age"],
    "TRANSFER_TOKENS": ["fromUserId", "toUserId", "amount"],
    "Q_SEND_PAY": ["fromUserId", "toUserId", "amount", "qsendRequestCode"],
    "DISTRIBUTE_GENESIS": ["userId", ("nationality", "countryCode")],
    "FREEZE_WALLET": [("userID", "userId")],
    "UNFREEZE_WALLET": [("userID", "userId")],
    "MINT": [("toUserId", "userId"), "amount"],
    "PROPOSE_ORGANIZATION": ["orgId", "orgName", "orgType", "stakeholderIds"],
    "ENDORSE_MEMBERSHIP": ["orgId"],
    "ACTIVATE_ORGANIZATION": ["orgId"],
    "DEFINE_AUTH_RULE": ["orgId", "rule"],
    "INITIATE_MULTISIG_TX": ["orgId", "toUserId", "amount"],
    "APPROVE_MULTISIG_TX": ["pendingTxId"],
    "EXECUTE_MULTISIG_TX": ["pendingTxId"],
    "APPLY_FOR_LOAN": ["borrowerId", "amount", "collateralHash"],
    "APPROVE_LOAN": ["loanId"],
    "SUBMIT_PROPOSAL": ["targetParam", "newValue"],
    "CAST_VOTE": ["proposalId", "vote"],
    "VOTE_ON_PROPOSAL": ["proposalId", "vote"],
    "EXECUTE_PROPOSAL": ["proposalId"],
    "BOOTSTRAP_SYSTEM": [],
    "INITIALIZE_COUNTRY_DATA": ["countriesData"],
    "UPDATE_SYSTEM_PARAMETER": ["paramId", "newValue"],
    "PAUSE_SYSTEM": ["reason"],
    "RESUME_SYSTEM": [],
    "APPOINT_ADMIN": ["newAdminId"],
    "ACTIVATE_TREASURY": ["countryCode"],
    "APPLY_VELOCITY_TAX": ["accountId", "taxRateBps"],
    "GOVT_CREATE_TREASURY": ["countryCode"],
    "GOVT_ONBOARD_TREASURY": ["treasuryId"],
    "GOVT_CREATE_ACCOUNT": ["treasuryId", "accountName"],
    "GOVT_ALLOCATE_FUNDS": ["fromEntityId", "toAccountId", "amount", "idempotencyKey"],
    "GOVT_DISBURSE_FUNDS": ["fromAccountId", "recipientId", "recipientType", "amount", "purpose", "category",
                            "idempotencyKey"],
    "GOVT_SYNC_BALANCE": ["treasuryId"],
}

OPTIONAL: dict[str, list[str]] = {
    "TRANSFER_TOKENS": ["remark", "idempotencyKey"],
    "Q_SEND_PAY": ["remark"],
    "FREEZE_WALLET": ["reason"],
    "MINT": ["remark"],
    "INITIATE_MULTISIG_TX": ["remark"],
    "GOVT_ONBOARD_TREASURY": ["verificationNotes"],
    "GOVT_CREATE_ACCOUNT": ["parentAccountId", "description", "budgetCode"],
    "GOVT_ALLOCATE_FUNDS": ["purpose"],
}

BAD_WORDS = ("undefined", "None", "null", "NaN", "nan")

# Uppercase-only ids cannot spell any of BAD_WORDS, so any such word in an argument came from us.
ids = st.from_regex(r"[A-Z0-9][A-Z0-9_-]{0,15}", fullmatch=True)
amounts = st.one_of(
    st.integers(min_value=0, max_value=10**15),
    st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False),
    st.from_regex(r"[0-9]{1,9}(\.[0-9]{1,6})?", fullmatch=True),
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "amount": amounts,
    "age": st.integers(min_value=0, max_value=150),
    "taxRateBps": st.integers(min_value=0, max_value=10_000),
    "biometricHash": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    "stakeholderIds": st.lists(ids, min_size=1, max_size=4),
    "rule": st.dictionaries(ids, st.one_of(ids, st.integers()), min_size=1, max_size=3),
    "countriesData": st.lists(
        st.fixed_dictionaries({"code": st.from_regex(r"[A-Z]{2}", fullmatch=True), "name": ids,
                               "percentage": st.one_of(st.integers(0, 100), st.floats(0, 100))}),
        min_size=1, max_size=4),
    "vote": st.one_of(st.booleans(), ids),
    "newValue": st.one_of(ids, st.integers(), st.booleans()),
}


def value_for(name: str) -> st.SearchStrategy[Any]:
    return FIELD_VALUES.get(name, ids)


@st.composite
def valid_payload(draw: st.DrawFn, command_type: str) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for need in REQUIRED[command_type]:
        name = draw(st.sampled_from(need)) if isinstance(need, tuple) else need
        payload[name] = draw(value_for(name))
    for name in OPTIONAL.get(command_type, []):
        choice = draw(st.integers(0, 3))
        if choice == 1:
            payload[name] = draw(value_for(name))
        elif choice == 2:
            payload[name] = None
        elif choice == 3:
            payload[name] = ""
    # Unrelated keys must be ignored.
    payload.update(draw(st.dictionaries(st.from_regex(r"x_[a-z]{1,5}", fullmatch=True), ids, max_size=2)))
    return payload


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_catalogue_has_exactly_the_chaincode_types(catalog: Catalog) -> None:
    assert set(catalog.all_types()) == set(CHAINCODE)
    assert dict(catalog.identities) == IDENTITY_ROLES


@pytest.mark.parametrize("command_type", sorted(CHAINCODE))
def test_route_matches_chaincode_model(catalog: Catalog, command_type: str) -> None:
    function, argc, role = CHAINCODE[command_type]
    route = catalog.route(command_type)
    assert route is not None
    assert route.command_type == command_type
    assert route.function == function
    assert route.argc == argc
    assert route.channel == "gxchannel" and route.chaincode == "gxtv3"
    assert IDENTITY_ROLES[route.identity] == role, f"{command_type} routed to {route.identity}"
    assert route.role == role
    # exactly one identity serves the type
    owners = [name for name in catalog.identities if command_type in catalog.types_for(name)]
    assert owners == [route.identity]


def test_unknown_type_has_no_route(catalog: Catalog) -> None:
    assert catalog.route("REQUEST_RELATIONSHIP") is None
    assert catalog.route("create_user") is None


def test_routed_identities_are_the_three_org1_identities(catalog: Catalog) -> None:
    assert catalog.routed_identities() == sorted(IDENTITY_ROLES)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("command_type", sorted(CHAINCODE))
def test_valid_payload_builds_clean_args(catalog: Catalog, command_type: str, data: st.DataObject) -> None:
    route = catalog.route(command_type)
    assert route is not None
    payload = data.draw(valid_payload(command_type))
    args = route.build_args(payload)
    assert len(args) == CHAINCODE[command_type][1]
    for arg in args:
        assert isinstance(arg, str)
        for word in BAD_WORDS:
            assert word not in arg, (command_type, payload, args)
    for arg in args:
        # numbers are canonical: no trailing ".0", no exponent
        assert not arg.endswith(".0") and "e+" not in arg


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("command_type", sorted(t for t in CHAINCODE if REQUIRED[t]))
def test_missing_required_field_names_it(catalog: Catalog, command_type: str, data: st.DataObject) -> None:
    route = catalog.route(command_type)
    assert route is not None
    payload = data.draw(valid_payload(command_type))
    need = data.draw(st.sampled_from(REQUIRED[command_type]))
    names = need if isinstance(need, tuple) else (need,)
    how = data.draw(st.sampled_from(["absent", "null", "blank"]))
    for name in names:
        payload.pop(name, None)
        if how == "null":
            payload[name] = None
        elif how == "blank":
            payload[name] = data.draw(st.sampled_from(["", "  "]))
    with pytest.raises(PayloadError) as info:
        route.build_args(payload)
    assert info.value.field == names[0]
    assert names[0] in str(info.value)


@settings(max_examples=200)
@given(payload=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ids,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ids, children, max_size=3),
    max_leaves=8,
), command_type=st.sampled_from(sorted(CHAINCODE)))
def test_arbitrary_payload_is_refused_or_clean(catalog: Catalog, payload: Any, command_type: str) -> None:
    route = catalog.route(command_type)
    assert route is not None
    try:
        args = route.build_args(payload)
    except PayloadError as exc:
        assert exc.field
        return
    assert len(args) == route.argc
    for arg in args:
        for word in ("undefined", "None", "NaN", "nan", "Infinity"):
            assert word not in arg


@pytest.mark.parametrize("payload", [[], [1], "x", 3, None, True])
def test_payload_must_be_an_object(catalog: Catalog, payload: Any) -> None:
    route = catalog.route("CREATE_USER")
    assert route is not None
    with pytest.raises(PayloadError) as info:
        route.build_args(payload)
    assert info.value.field == "payload"


TRANSFER = {"fromUserId": "A", "toUserId": "B", "amount": 100}


@pytest.mark.parametrize("amount", [100, 100.0, "100", "100.00", " 100 "])
def test_amount_renders_canonically(catalog: Catalog, amount: Any) -> None:
    route = catalog.route("TRANSFER_TOKENS")
    assert route is not None
    assert route.build_args({**TRANSFER, "amount": amount}) == [
        "A", "B", "100", "", "User-initiated transfer", ""]


BAD_AMOUNTS = [True, False, math.nan, math.inf, "1e3", "abc", "", [1], {"v": 1}, -1, "-5"]


@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
def test_bad_amount_is_refused(catalog: Catalog, amount: Any) -> None:
    route = catalog.route("TRANSFER_TOKENS")
    assert route is not None
    with pytest.raises(PayloadError) as info:
        route.build_args({**TRANSFER, "amount": amount})
    assert info.value.field == "amount"


@pytest.mark.parametrize(("value", "text"), [
    (0.5, "0.5"), (1e-7, "0.0000001"), (1e21, "1000000000000000000000"), ("007", "7"),
    ("12.3400", "12.34"), (-0.0, "0"), (10**30, "1" + "0" * 30),
])
def test_canonical_number(value: Any, text: str) -> None:
    assert canonical_number(value, "x") == text


def test_integer_fields_refuse_fractions(catalog: Catalog) -> None:
    route = catalog.route("CREATE_USER")
    assert route is not None
    base = {"userId": "U1", "biometricHash": "ab" * 32, "nationality": "US"}
    assert route.build_args({**base, "age": 30.0})[3] == "30"
    with pytest.raises(PayloadError, match="integer") as info:
        route.build_args({**base, "age": 30.5})
    assert info.value.field == "age"


def test_create_user_fallback_and_pattern(catalog: Catalog) -> None:
    route = catalog.route("CREATE_USER")
    assert route is not None
    base = {"userId": "U1", "biometricHash": "ab" * 32, "age": 30}
    assert route.build_args({**base, "countryCode": "MY"})[2] == "MY"
    assert route.build_args({**base, "nationality": "US", "countryCode": "MY"})[2] == "US"
    assert route.build_args({**base, "nationality": "", "countryCode": "MY"})[2] == "MY"
    with pytest.raises(PayloadError) as info:
        route.build_args({**base, "countryCode": "MY", "biometricHash": "not-hex"})
    assert info.value.field == "biometricHash"


def test_freeze_reads_userID_or_userId_and_defaults_reason(catalog: Catalog) -> None:
    route = catalog.route("FREEZE_WALLET")
    assert route is not None
    assert route.build_args({"userId": "P1"}) == ["P1", "ADMIN_ACTION"]
    assert route.build_args({"userID": "F1", "userId": "P1", "reason": "fraud"}) == ["F1", "fraud"]


def test_qsend_idempotency_template(catalog: Catalog) -> None:
    route = catalog.route("Q_SEND_PAY")
    assert route is not None
    payload = {"fromUserId": "A", "toUserId": "B", "amount": "25.50", "qsendRequestCode": "QS-9"}
    args = route.build_args(payload)
    assert args == ["A", "B", "25.5", "P2P", "Q Send payment", "qsend-QS-9"]
    with pytest.raises(PayloadError) as info:
        route.build_args({"fromUserId": "A", "toUserId": "B", "amount": 1, "qsendRequestCode": {"x": 1}})
    assert info.value.field == "qsendRequestCode"


def test_country_data_maps_to_code_and_percentage(catalog: Catalog) -> None:
    route = catalog.route("INITIALIZE_COUNTRY_DATA")
    assert route is not None
    payload = {"countriesData": [{"code": "US", "name": "United States", "percentage": 4.0},
                                 {"code": "MY", "name": "Malaysia", "percentage": 0.25}]}
    expected = '[{"countryCode":"US","percentage":4},{"countryCode":"MY","percentage":0.25}]'
    assert route.build_args(payload) == [expected]
    with pytest.raises(PayloadError) as info:
        route.build_args({"countriesData": [{"code": "US", "percentage": 1}, {"name": "x", "percentage": 1}]})
    assert info.value.field == "countriesData[1].code"
    with pytest.raises(PayloadError) as info:
        route.build_args({"countriesData": []})
    assert info.value.field == "countriesData"


def test_json_arguments(catalog: Catalog) -> None:
    route = catalog.route("PROPOSE_ORGANIZATION")
    assert route is not None
    payload = {"orgId": "O1", "orgName": "Ørg", "orgType": "NGO", "stakeholderIds": ["U1", "U2"]}
    args = route.build_args(payload)
    assert args == ["O1", "Ørg", "NGO", '["U1","U2"]']
    with pytest.raises(PayloadError) as info:
        route.build_args({"orgId": "O1", "orgName": "x", "orgType": "NGO", "stakeholderIds": "U1"})
    assert info.value.field == "stakeholderIds"
    rule = catalog.route("DEFINE_AUTH_RULE")
    assert rule is not None
    assert rule.build_args({"orgId": "O1", "rule": {"threshold": 2}}) == ["O1", '{"threshold":2}']


def test_vote_alias_and_rendering(catalog: Catalog) -> None:
    cast, vote = catalog.route("CAST_VOTE"), catalog.route("VOTE_ON_PROPOSAL")
    assert cast is not None and vote is not None
    assert vote.command_type == "VOTE_ON_PROPOSAL"
    assert (cast.identity, cast.function) == (vote.identity, vote.function)
    assert vote.build_args({"proposalId": "P1", "vote": True}) == ["P1", "true"]


@pytest.mark.parametrize("placeholder", ["undefined", "null", "None", "NaN"])
def test_placeholder_strings_are_refused(catalog: Catalog, placeholder: str) -> None:
    route = catalog.route("APPROVE_LOAN")
    assert route is not None
    with pytest.raises(PayloadError) as info:
        route.build_args({"loanId": placeholder})
    assert info.value.field == "loanId"


# ---- operator catalogue files ---------------------------------------------------------------------

MINIMAL = """
[defaults]
channel = "ch"
chaincode = "cc"
[identities]
"ops" = "gx_admin"
[types.PING]
identity = "ops"
function = "Ops:Ping"
args = [{ field = "id" }]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_replacement_catalogue(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, MINIMAL))
    assert catalog.all_types() == ["PING"]
    route = catalog.route("PING")
    assert route is not None
    assert (route.identity, route.role, route.channel, route.chaincode) == ("ops", "gx_admin", "ch", "cc")
    assert route.build_args({"id": 7}) == ["7"]
    assert catalog.route("CREATE_USER") is None


def test_channels_per_identity_one_commit_stream_each(tmp_path: Path) -> None:
    text = MINIMAL + """
[types.AUDIT]
identity = "ops"
channel = "audit-ch"
function = "Ops:Audit"
args = []
"""
    catalog = load_catalog(write(tmp_path, text))
    assert catalog.channels_for("ops") == ["audit-ch", "ch"]
    assert catalog.channels_for("nobody") == []


def test_extending_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, """
extends = "default"
remove = ["MINT"]
[identities]
"org1-ops" = "gx_admin"
[types.PING]
identity = "org1-ops"
role = "gx_admin"
function = "Ops:Ping"
chaincode = "ops"
args = []
[types.APPROVE_LOAN]
identity = "org1-ops"
function = "LoanPoolContract:ApproveLoan"
args = [{ field = "loanRef" }]
""")
    catalog = load_catalog(path)
    assert catalog.route("MINT") is None
    ping = catalog.route("PING")
    assert ping is not None and ping.chaincode == "ops" and ping.channel == "gxchannel"
    loan = catalog.route("APPROVE_LOAN")
    assert loan is not None and loan.identity == "org1-ops" and loan.build_args({"loanRef": "L"}) == ["L"]
    assert catalog.route("CREATE_USER") is not None
    assert len(catalog.all_types()) == len(CHAINCODE)  # -MINT +PING


def _replace(old: str, new: str) -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new)


def _arg(new: str) -> str:
    return _replace('{ field = "id" }', new)


BAD_FILES = [
    ("[types\nx = 1", "", "not valid TOML"),
    (MINIMAL + "\nbogus = 1\n", "types.PING.bogus", "unknown key"),
    ("colour = 1\n" + MINIMAL, "colour", "unknown key"),
    (_replace('identity = "ops"', 'identity = "nobody"'), "types.PING.identity", "not declared"),
    (_replace('function = "Ops:Ping"', 'function = "Ops:Ping"\nrole = "gx_super_admin"'), "types.PING.role",
     "requires 'gx_super_admin'"),
    (_replace('"Ops:Ping"', '"Ping"'), "types.PING.function", "contract-qualified"),
    (_arg('{ field = "id", kind = "strng" }'), "types.PING.args[0].kind", "unknown kind"),
    (_arg('{ field = "id", fields = ["a"] }'), "types.PING.args[0]", "not both"),
    (_arg('{ kind = "number" }'), "types.PING.args[0]", "needs 'field'"),
    (_arg('{ field = "id", minimum = 0 }'), "types.PING.args[0].minimum", "unknown key"),
    (_arg('{ kind = "template", template = "x-{a.b}" }'), "types.PING.args[0].template",
     "plain payload field"),
    (_arg('{ kind = "template", template = "x-{" }'), "types.PING.args[0].template",
     "bad template"),
    (_arg('{ field = "id", pattern = "(" }'), "types.PING.args[0].pattern",
     "regular expression"),
    (_replace('args = [{ field = "id" }]', 'args = "id"'), "types.PING.args", "array"),
    (_replace('args = [', 'aliases = ["PING"]\nargs = ['), "types.PING.aliases", "routed twice"),
    (_replace('chaincode = "cc"\n', ''), "types.PING.chaincode", "not set"),
    (_replace('"ops" = "gx_admin"', ''), "identities", "at least one identity"),
    ('extends = "gx-v2"\n', "extends", "only \"default\""),
    ('remove = ["MINT"]\n' + MINIMAL, "remove", "needs extends"),
    ('extends = "default"\nremove = ["NOPE"]\n', "remove", "not a type"),
    (_replace('"ops" = "gx_admin"', '"ops" = 3'), "identities.ops", "must be a string"),
    (_replace('"ops" = "gx_admin"', '"../ops" = "gx_admin"'), "identities.../ops", "identity names"),
]


@pytest.mark.parametrize(("text", "key", "reason"), BAD_FILES)
def test_bad_catalogue_file(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert info.value.source == str(path)
    assert info.value.key == key
    assert reason in info.value.reason
    assert str(info.value).startswith(str(path) + ": ")


def test_missing_catalogue_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read") as info:
        load_catalog(tmp_path / "absent.toml")
    assert info.value.source == str(tmp_path / "absent.toml")
