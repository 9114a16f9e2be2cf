"""Issue 16, row side, pure logic: per-row decoding, byte-size settings, messages over a size cap."""

from __future__ import annotations

import json

import pytest

from gxsubmit.config import ConfigError, load_config
from gxsubmit.decisions import INFRA_ERROR_CODES, error_action
from gxsubmit.fabric.errors import ErrorClass, classify
from gxsubmit.rowdecode import BadPayload, decode_payloads

P, IN, T = ErrorClass.PERMANENT, ErrorClass.IN_DOUBT, ErrorClass.TRANSIENT


@pytest.mark.parametrize(
    ("stage", "code", "text", "cls", "error_code"),
    [
        # grpcio's own words for a message over its cap: not an outage, never the breaker
        ("endorse", "RESOURCE_EXHAUSTED", "Sent message larger than max (20972000 vs. 4194304)", P,
         "PAYLOAD_TOO_LARGE"),
        ("submit", "RESOURCE_EXHAUSTED", "Received message larger than max (5000000 vs. 4194304)", P,
         "PAYLOAD_TOO_LARGE"),
        ("evaluate", "RESOURCE_EXHAUSTED", "Sent message larger than max (1 vs. 0)", P, "PAYLOAD_TOO_LARGE"),
        ("commit_status", "RESOURCE_EXHAUSTED", "Received message larger than max (9 vs. 4)", IN,
         "MESSAGE_TOO_LARGE"),
        ("deliver", "RESOURCE_EXHAUSTED", "Received message larger than max (9 vs. 4)", T,
         "MESSAGE_TOO_LARGE"),
        # the orderer's BatchSize.AbsoluteMaxBytes
        ("submit", "ABORTED", "received unsuccessful response from orderer: status=REQUEST_ENTITY_TOO_LARGE",
         P, "PAYLOAD_TOO_LARGE"),
        # a gateway that is merely overloaded stays an outage
        ("endorse", "RESOURCE_EXHAUSTED", "too many requests", T, "RESOURCE_EXHAUSTED"),
    ],
)
def test_a_message_over_a_size_cap_is_the_rows_problem(
    stage: str, code: str, text: str, cls: ErrorClass, error_code: str
) -> None:
    assert classify(stage, code, text) == (cls, error_code)
    if error_code != "RESOURCE_EXHAUSTED":
        assert error_code not in INFRA_ERROR_CODES


def test_an_oversized_proposal_fails_at_once_and_counts() -> None:
    from gxsubmit.fabric.errors import FabricError

    err = FabricError(stage="endorse", error_class=P, error_code="PAYLOAD_TOO_LARGE", message="m",
                      grpc_code="RESOURCE_EXHAUSTED")
    action = error_action(err, may_be_on_ledger=False)
    assert (action.kind, action.error_code) == ("fail", "PAYLOAD_TOO_LARGE")


def test_one_undecodable_row_does_not_take_its_batch_down() -> None:
    texts = ['{"a": 1}', '{"age": ' + "9" * 5000 + "}", '{"x": ' + "[" * 5000 + "]" * 5000 + "}",
             '{"b": 2}', '{"n": 12345678901234567890123}']
    out = decode_payloads(texts)
    assert out[0] == {"a": 1} and out[3] == {"b": 2}
    assert out[4] == {"n": 12345678901234567890123}  # exact, as json.loads
    assert isinstance(out[1], BadPayload) and out[1].code == "PAYLOAD_INVALID" and "digits" in out[1].reason
    assert isinstance(out[2], BadPayload) and "deep" in out[2].reason
    for bad in (out[1], out[2]):
        assert isinstance(bad, BadPayload) and len(bad.reason) < 200


def test_a_payload_over_the_limit_is_not_decoded() -> None:
    big = json.dumps({"userId": "x" * 5000})
    out = decode_payloads(['{"a": 1}', big, '{"c": "\u00e9"}'], 4096)
    assert out[0] == {"a": 1} and out[2] == {"c": "\u00e9"}
    assert isinstance(out[1], BadPayload) and out[1].code == "PAYLOAD_TOO_LARGE"
    assert str(len(big)) in out[1].reason and "4096" in out[1].reason
    # multi-byte characters count as their UTF-8 bytes
    wide = json.dumps({"u": "\u00e9" * 3000}, ensure_ascii=False)
    assert len(wide) < 4096 < len(wide.encode())
    (res,) = decode_payloads([wide], 4096)
    assert isinstance(res, BadPayload) and res.code == "PAYLOAD_TOO_LARGE"
    assert decode_payloads([wide], 1 << 20) == [json.loads(wide)]


def test_limit_settings_take_sizes_with_units() -> None:
    cfg = load_config(environ={"GXSUBMIT_MAX_PAYLOAD_BYTES": "2MiB", "GXSUBMIT_MAX_ARGUMENT_BYTES": "64KiB",
                               "GXSUBMIT_MAX_PROPOSAL_BYTES": "100000"})
    assert (cfg.max_payload_bytes, cfg.max_argument_bytes, cfg.max_proposal_bytes) == (2 << 20, 65536, 100000)
    defaults = load_config(environ={})
    # well under grpcio's 4 MiB default cap and any orderer's AbsoluteMaxBytes seen in practice
    assert defaults.max_payload_bytes <= 1 << 20 and defaults.max_proposal_bytes <= 1 << 20
    assert defaults.max_worker_crashes >= 2
    for raw in ("12 parsecs", "-1", "1TiB", "", "0"):
        with pytest.raises(ConfigError, match="GXSUBMIT_MAX_PAYLOAD_BYTES"):
            load_config(environ={"GXSUBMIT_MAX_PAYLOAD_BYTES": raw})
    with pytest.raises(ConfigError, match="GXSUBMIT_MAX_WORKER_CRASHES"):
        load_config(environ={"GXSUBMIT_MAX_WORKER_CRASHES": "1"})


def test_in_doubt_expires_only_for_in_doubt_retries_past_the_limit() -> None:
    from datetime import UTC, datetime, timedelta

    from gxsubmit.decisions import Action, in_doubt_expired

    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    doubt = Action("retry", "SUBMIT_DEADLINE_EXCEEDED", counts=False, on_ledger=True, reason="in_doubt")
    outage = Action("retry", "GATEWAY_UNAVAILABLE", counts=False, reason="gateway_unavailable")
    old, fresh = now - timedelta(seconds=3601), now - timedelta(seconds=10)
    assert in_doubt_expired(doubt, old, now, 3600.0)
    assert not in_doubt_expired(doubt, fresh, now, 3600.0)
    assert not in_doubt_expired(doubt, None, now, 3600.0)  # never submitted: nothing can be on the ledger
    assert not in_doubt_expired(doubt, old, now, 0.0)  # 0: resolve for ever
    assert not in_doubt_expired(outage, old, now, 3600.0)  # an outage never ages a row out
