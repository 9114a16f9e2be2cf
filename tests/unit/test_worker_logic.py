"""Pure decisions of the worker: nonce plan, commit/error outcomes, identity ring, batching, boot checks."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gxsubmit.config import Config
from gxsubmit.dblink import Batcher
from gxsubmit.decisions import (
    EXPIRED_CREATOR_GRACE,
    INFRA_ERROR_CODES,
    commit_action,
    creator_long_expired,
    error_action,
    reproducing_signer,
)
from gxsubmit.devwallet import make_dev_wallet
from gxsubmit.fabric import ErrorClass, FabricError, SigningIdentity
from gxsubmit.identityring import IdentityRing
from gxsubmit.metrics import exposed_metric_names, render_latest
from gxsubmit.wallet import load_identity
from gxsubmit.workerboot import ConfigProblem, boot
from gxsubmit.workerstatus import status_path


def err(cls: ErrorClass, code: str, stage: str = "endorse") -> FabricError:
    return FabricError(stage=stage, error_class=cls, error_code=code, message="m")


# -- nonce ---------------------------------------------------------------------------------------


def test_the_signer_is_the_one_that_reproduces_the_stored_tx_id(tmp_path: Path) -> None:
    from gxsubmit.fabric import compute_tx_id

    make_dev_wallet(tmp_path / "w")
    wa = load_identity(tmp_path / "w", "org1-admin", msp_id="Org1MSP", expected_role="gx_admin")
    wb = load_identity(tmp_path / "w", "org1-super-admin", msp_id="Org1MSP", expected_role=None)
    a, b = SigningIdentity.from_wallet(wa), SigningIdentity.from_wallet(wb)
    nonce = b"n" * 25
    assert reproducing_signer(nonce, None, [a, b]) is a  # nothing stored: the current identity
    assert reproducing_signer(nonce, compute_tx_id(nonce, b.creator), [a, b]) is b  # rotated, old one held
    assert reproducing_signer(nonce, compute_tx_id(nonce, b.creator), [a]) is None  # resolve first
    # The same certificate in other bytes is another creator, whatever its DER fingerprint says.
    crlf = SigningIdentity(msp_id=a.msp_id, cert_pem=a.cert_pem.replace(b"\n", b"\r\n").rstrip(),
                           private_key=wa.private_key)
    assert crlf.fingerprint == a.fingerprint and crlf.creator_fingerprint != a.creator_fingerprint
    assert reproducing_signer(nonce, compute_tx_id(nonce, a.creator), [crlf]) is None


# -- commit codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name", "kind", "burn"),
    [
        (0, "VALID", "commit", False),
        (11, "MVCC_READ_CONFLICT", "retry", True),
        (12, "PHANTOM_READ_CONFLICT", "retry", True),
        (9, "DUPLICATE_TXID", "retry", False),
        (254, "NOT_VALIDATED", "retry", False),
        (4, "BAD_CREATOR_SIGNATURE", "fail", False),
        (255, "INVALID_OTHER_REASON", "fail", False),
    ],
)
def test_commit_action(code: int, name: str, kind: str, burn: bool) -> None:
    a = commit_action(code, name, attempts=1)
    assert a.kind == kind and a.burn_nonce == burn
    if kind == "fail":
        assert a.error_code == name


def test_duplicate_commit_code_is_never_failed_or_burnt() -> None:
    a = commit_action(9, "DUPLICATE_TXID", attempts=99)
    assert a.kind == "retry" and not a.burn_nonce and a.on_ledger and not a.counts


def test_endorsement_policy_failure_gets_bounded_new_nonce_retries() -> None:
    assert commit_action(10, "ENDORSEMENT_POLICY_FAILURE", attempts=1).burn_nonce
    assert commit_action(10, "ENDORSEMENT_POLICY_FAILURE", attempts=5).kind == "fail"


# -- error classes --------------------------------------------------------------------------------


def test_transient_keeps_nonce_and_gateway_down_does_not_count() -> None:
    a = error_action(err(ErrorClass.TRANSIENT, "GATEWAY_UNAVAILABLE"), may_be_on_ledger=False)
    assert a.kind == "retry" and not a.burn_nonce and not a.counts
    b = error_action(err(ErrorClass.TRANSIENT, "DEADLINE_EXCEEDED"), may_be_on_ledger=False)
    assert b.kind == "retry" and not b.burn_nonce and b.counts
    assert "GATEWAY_UNAVAILABLE" in INFRA_ERROR_CODES


def test_in_doubt_keeps_nonce_and_marks_on_ledger() -> None:
    a = error_action(err(ErrorClass.IN_DOUBT, "GATEWAY_UNAVAILABLE", "submit"), may_be_on_ledger=True)
    assert a.kind == "retry" and not a.burn_nonce and a.on_ledger and not a.counts


def test_conflict_never_burns_the_nonce_whatever_the_stage() -> None:
    # An endorsement mismatch says nothing about the tx id, and a copy may be in flight (issue 15).
    a = error_action(err(ErrorClass.CONFLICT, "ENDORSEMENT_MISMATCH"), may_be_on_ledger=False)
    assert a.kind == "retry" and not a.burn_nonce and a.counts
    b = error_action(err(ErrorClass.CONFLICT, "X", "submit"), may_be_on_ledger=True)
    assert not b.burn_nonce and b.on_ledger
    c = error_action(err(ErrorClass.CONFLICT, "ENDORSEMENT_MISMATCH"), may_be_on_ledger=True)
    assert c.kind == "retry" and not c.burn_nonce and c.on_ledger


def test_permanent_fails_unless_a_copy_may_be_on_the_ledger() -> None:
    a = error_action(err(ErrorClass.PERMANENT, "CHAINCODE_ERROR"), may_be_on_ledger=False)
    assert a.kind == "fail" and a.error_code == "CHAINCODE_ERROR"
    b = error_action(err(ErrorClass.PERMANENT, "CHAINCODE_ERROR"), may_be_on_ledger=True)
    assert b.kind == "resolve"


def test_duplicate_endorsement_resolves_by_commit_status() -> None:
    assert error_action(err(ErrorClass.DUPLICATE, "DUPLICATE_TXID"), may_be_on_ledger=False).kind == "resolve"


# -- identity ring ----------------------------------------------------------------------------------


def test_identity_ring_keeps_old_identity_until_expiry(tmp_path: Path) -> None:
    make_dev_wallet(tmp_path / "w")
    a = load_identity(tmp_path / "w", "org1-admin", msp_id="Org1MSP", expected_role="gx_admin")
    b = load_identity(tmp_path / "w", "org1-super-admin", msp_id="Org1MSP", expected_role=None)
    ring = IdentityRing(SigningIdentity.from_wallet(a), a.not_after)
    ring.rotate(SigningIdentity.from_wallet(b), b.not_after)
    sa, sb = SigningIdentity.from_wallet(a), SigningIdentity.from_wallet(b)
    assert ring.current.fingerprint == b.fingerprint
    assert ring.holds(sa.creator_fingerprint) and ring.holds(sb.creator_fingerprint)
    assert ring.get(sa.creator_fingerprint, now=a.not_after + timedelta(seconds=1)) is None
    assert not ring.holds("unknown")
    assert [s.fingerprint for s in ring.signers()] == [b.fingerprint, a.fingerprint]
    assert [s.fingerprint for s in ring.signers(a.not_after + timedelta(seconds=1))] == [b.fingerprint]
    # Expiry dates stay known for the rows recorded under them (even once expired), not for others.
    assert (ring.not_after(sa.creator_fingerprint), ring.not_after(sb.creator_fingerprint)) == (
        a.not_after, b.not_after)
    assert ring.not_after("unknown") is None and ring.not_after(None) is None


def test_old_tx_ids_are_given_up_only_long_after_their_certificate_expired() -> None:
    expired = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert EXPIRED_CREATOR_GRACE >= timedelta(hours=1)
    assert not creator_long_expired(None, expired + timedelta(days=365))  # expiry not recorded: wait
    assert not creator_long_expired(expired, expired - timedelta(days=1))  # still valid
    assert not creator_long_expired(expired, expired + EXPIRED_CREATOR_GRACE - timedelta(seconds=1))
    assert creator_long_expired(expired, expired + EXPIRED_CREATOR_GRACE)


# -- batching ---------------------------------------------------------------------------------------


async def test_batcher_coalesces_and_reports_fence() -> None:
    calls: list[list[uuid.UUID]] = []
    lost = uuid.uuid4()

    async def flush(items: list[uuid.UUID]) -> set[uuid.UUID]:
        calls.append(list(items))
        await asyncio.sleep(0.01)
        return {i for i in items if i != lost}

    b: Batcher[uuid.UUID] = Batcher("t", flush, lambda i: i)
    b.start()
    ids = [uuid.uuid4() for _ in range(50)] + [lost]
    results = await asyncio.gather(*(b.put(i) for i in ids))
    assert results[:-1] == [True] * 50 and results[-1] is False
    assert len(calls) <= 2 and sum(map(len, calls)) == 51
    await b.stop()


async def test_batcher_lingers_only_under_load() -> None:
    """Idle: the first item is written at once. Busy (a flush just ended): the next flush waits the
    linger so that items arriving meanwhile share its statement."""
    calls: list[list[uuid.UUID]] = []

    async def flush(items: list[uuid.UUID]) -> set[uuid.UUID]:
        calls.append(list(items))
        return set(items)

    b: Batcher[uuid.UUID] = Batcher("t", flush, lambda i: i, linger_s=0.5, busy_s=10.0)
    b.start()
    assert await b.put(uuid.uuid4())  # idle: written alone, without waiting for the linger
    assert len(calls) == 1

    async def trickle() -> list[bool]:
        out = []
        for _ in range(5):  # one item per loop tick (no wall-clock wait): each joins the lingering batch
            out.append(asyncio.ensure_future(b.put(uuid.uuid4())))
            await asyncio.sleep(0)
        return list(await asyncio.gather(*out))

    assert await trickle() == [True] * 5
    assert len(calls) == 2 and len(calls[1]) == 5  # busy: the five shared one statement
    await b.stop()


async def test_batcher_write_failure_is_reported_as_not_held() -> None:
    async def flush(items: list[uuid.UUID]) -> set[uuid.UUID]:
        raise RuntimeError("db gone")

    b: Batcher[uuid.UUID] = Batcher("t", flush, lambda i: i)
    b.start()
    assert await b.put(uuid.uuid4()) is False
    await b.stop()


# -- boot / config problems -------------------------------------------------------------------------


def test_boot_rejects_unknown_identity_and_bad_wallet(tmp_path: Path) -> None:
    make_dev_wallet(tmp_path / "w")
    cfg = Config(wallet=tmp_path / "w", insecure=True)
    with pytest.raises(ConfigProblem, match="not in the catalogue"):
        boot(cfg, "org9-nobody")
    (tmp_path / "w" / "org1-admin-cert").write_bytes((tmp_path / "w" / "org1-super-admin-cert").read_bytes())
    with pytest.raises(ConfigProblem, match="org1-admin"):
        boot(cfg, "org1-admin")
    b = boot(cfg, "org1-partner-api")
    assert "CREATE_USER" in b.types and b.role == "gx_partner_api" and b.tls_root is None


def test_boot_requires_tls_ca_unless_insecure(tmp_path: Path) -> None:
    make_dev_wallet(tmp_path / "w")
    b = boot(Config(wallet=tmp_path / "w"), "org1-admin")
    assert b.tls_root and b.client_cert and b.client_key
    with pytest.raises(ConfigProblem, match="TLS CA"):
        boot(Config(wallet=tmp_path / "w", tls_ca=tmp_path / "missing"), "org1-admin")


def test_status_path() -> None:
    assert status_path(Path("/run/x"), "org1-admin") == Path("/run/x/worker-org1-admin.json")


# -- metrics ----------------------------------------------------------------------------------------


def test_metric_names_match_design() -> None:
    names = exposed_metric_names()
    for n in (
        "gxsubmit_commands_claimed_total", "gxsubmit_commands_committed_total",
        "gxsubmit_commands_failed_total",
        "gxsubmit_command_retries_total", "gxsubmit_stage_duration_seconds_bucket",
        "gxsubmit_command_latency_seconds_count", "gxsubmit_in_flight", "gxsubmit_worker_up",
        "gxsubmit_worker_restarts_total", "gxsubmit_outbox_rows", "gxsubmit_oldest_pending_age_seconds",
        "gxsubmit_identity_cert_expiry_timestamp_seconds", "gxsubmit_breaker_open",
    ):
        assert n in names
    assert not any(n.endswith("_created") for n in names)


def test_render_latest_exposes_only_known_names() -> None:
    from gxsubmit.metrics import WorkerMetrics

    m = WorkerMetrics("unit-test")
    m.claimed("CREATE_USER")
    m.failed("CREATE_USER", "PAYLOAD_INVALID")
    text = render_latest().decode()
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line.startswith("gxsubmit_")}
    assert exposed <= exposed_metric_names()
    assert 'error_code="PAYLOAD_INVALID"' in text


def test_a_job_that_only_writes_its_outcome_frees_its_slot_within_twice_the_limit() -> None:
    from gxsubmit.claimloop import free_slots

    assert free_slots(256, 0, 0) == 256
    assert free_slots(256, 256, 0) == 0  # all in flight
    assert free_slots(256, 256, 100) == 100  # 100 committed, their marks on the way: claim 100 more
    assert free_slots(256, 400, 144) == 0  # 256 in flight again, 144 writes pending
    assert free_slots(256, 500, 300) == 12  # 56 in flight, but 500 in memory: 12 more at most
    assert free_slots(256, 512, 512) == 0  # outcome writes that cannot land stop the claims
