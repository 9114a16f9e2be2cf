"""The benchmark harness starts (``--help``) and its percentile / table code is right. No timing asserts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.common import fmt_num, format_table, percentile, result_rows  # noqa: E402
from bench.run import evaluate_targets  # noqa: E402


def test_help_lists_every_scenario() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench/run.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    for name in (
        "saturation",
        "realistic",
        "original",
        "official_client",
        "queue",
        "idle",
        "startup",
        "--quick",
        "--json",
    ):
        assert name in out.stdout


def test_percentile_interpolates_like_numpy() -> None:
    data = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(data, 0) == 15.0
    assert percentile(data, 100) == 50.0
    assert percentile(data, 50) == 35.0
    assert percentile(data, 40) == pytest.approx(29.0)  # pos 1.6 -> 20 + 0.6 * 15
    assert percentile(list(reversed(data)), 95) == pytest.approx(48.0)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(data, 101)


def test_number_formatting() -> None:
    assert fmt_num(None) == "-"
    assert fmt_num(0) == "0"
    assert fmt_num(1234.4, 4) == "1,234"  # thousands separator, no decimals
    assert fmt_num(0.0123) == "0.0123"
    assert fmt_num(12.345) == "12.3"
    assert fmt_num(float("nan")) == "-"


def test_result_rows_and_table_alignment() -> None:
    results = {
        "saturation": {
            "configs": [
                {
                    "config": "1 sup",
                    "commands_per_s": 1500.0,
                    "p99_ms": 12.5,
                    "gxsubmit_cpu_ms_per_command": 0.4,
                }
            ]
        },
        "queue": {"configs": [{"config": "graphile-worker", "skipped": "npm missing"}]},
        "idle": {"skipped": "error: boom"},
    }
    rows = result_rows(results)
    assert rows[0][:3] == ["saturation", "1 sup", "1,500"]
    assert "skipped: npm missing" in rows[1][-1]
    assert rows[2][1] == "SKIPPED" and rows[2][-1] == "error: boom"
    table = format_table(["a", "b", "n"], [["x", "y", "1"], ["xx", "yy", "100"]]).splitlines()
    assert len({len(line) for line in table}) == 1  # every line equally wide: numbers right-aligned
    assert table[2].endswith("  1")


def test_targets_pass_and_miss_without_asserting() -> None:
    results = {
        "saturation": {
            "configs": [{"config": "1", "commands_per_s": 1200.0, "gxsubmit_cpu_ms_per_command": 0.7}]
        }
    }
    verdicts = {t["name"]: t["verdict"] for t in evaluate_targets(results)}
    assert verdicts["saturation throughput, 1 supervisor"] == "PASS"
    assert verdicts["saturation gxsubmit CPU per command"] == "MISS"
