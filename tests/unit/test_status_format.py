"""``gxsubmit status`` as text: what an operator reads when a backlog does not drain."""

from __future__ import annotations

from gxsubmit.admin import format_status
from gxsubmit.outbox import QueueStats


def test_status_names_why_unfinished_rows_are_retrying() -> None:
    stats = QueueStats(
        by_status={"PENDING": 3, "CLAIMED": 0, "SUBMITTED": 0, "COMMITTED": 5, "FAILED": 1},
        by_status_type={("PENDING", "MINT"): 3, ("COMMITTED", "MINT"): 5, ("FAILED", "MINT"): 1},
        oldest_pending_age_s=42.0,
        failed_by_code={"CHAINCODE_ERROR": 1},
        retrying_by_code={"ROTATION_UNRESOLVED": 2, "GATEWAY_UNAVAILABLE": 1},
    )
    lines = format_status(stats).splitlines()
    at = lines.index("retrying (not finished, last try failed) by error code:")
    assert lines[at + 1 : at + 3] == ["  ROTATION_UNRESOLVED: 2", "  GATEWAY_UNAVAILABLE: 1"]
    assert lines[at + 3 : at + 5] == ["failed by error code:", "  CHAINCODE_ERROR: 1"]
    assert "oldest pending: 42.0 s" in lines


def test_status_without_failures_has_no_error_sections() -> None:
    text = format_status(QueueStats(by_status={"PENDING": 0}))
    assert "retrying" not in text and "failed by" not in text


def test_status_of_a_large_table_marks_the_committed_count_as_an_estimate() -> None:
    stats = QueueStats(
        by_status={"PENDING": 2, "CLAIMED": 0, "SUBMITTED": 0, "COMMITTED": 4_000_000, "FAILED": 0},
        by_status_type={("PENDING", "MINT"): 2},
        committed_estimated=True,
    )
    lines = format_status(stats).splitlines()
    head = lines[0].split()
    mint = dict(zip(head, lines[1].split(), strict=True))
    total = dict(zip(head, lines[2].split(), strict=True))
    assert (mint["PENDING"], mint["COMMITTED"]) == ("2", "-")  # no per-type split is known
    assert total["COMMITTED"] == "~4000000"
    assert any(line.startswith("COMMITTED: the planner's estimate") for line in lines)
    exact = format_status(QueueStats(by_status={"COMMITTED": 5}, by_status_type={("COMMITTED", "MINT"): 5}))
    assert "~" not in exact and "estimate" not in exact
