"""A short fixed-seed soak (bench/scenarios/soak.py): two supervisors, mixed load, every fault kind once,
overlapping. Asserts correctness only (nothing lost, duplicated or stuck; every kind ran), never timings:
the figures are printed for the log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.scenarios.soak import KINDS, run_soak

pytestmark = pytest.mark.slow


def test_short_soak_loses_duplicates_and_strands_nothing(tmp_path: Path) -> None:
    result = run_soak(tmp_path, minutes=1.0, seed=18, rounds_every=10.0, drain_s=120.0)
    shown = {k: v for k, v in result.items() if k not in ("schedule", "audit")}
    print(json.dumps(shown, indent=1, default=str))
    assert set(result["faults"]) == set(KINDS), result["schedule"]
    assert result["audit_ok"], result["audit"]
    assert result["lost"] == 0, result["lost_examples"]
    assert result["duplicated"] == 0
    assert result["stuck"] == 0, result["stuck_by_code"]
    assert result["commands"] > 100
    assert result["audited_commands"] > result["commands"] - 50  # all but the poison and once-only rows
