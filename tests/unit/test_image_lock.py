"""deploy/image/requirements.lock still covers setup.cfg: the image build installs from the lock only, so a
dependency added to install_requires without re-locking would be missing from the image (or a version
outside the declared range would be in it)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "deploy" / "image" / "requirements.lock"


def _locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    text = LOCK.read_text()
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if m:
            pins[canonicalize_name(m.group(1))] = (m.group(2), block.count("--hash=sha256:"))
    return pins


def test_every_runtime_requirement_is_locked_with_hashes_and_in_range() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requirements = [Requirement(line.strip()) for line in cfg["options"]["install_requires"].splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    pins = _locked()
    assert requirements and pins
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in the lock: run deploy/image/lock-requirements"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), (req.name, version, str(req.specifier))
        assert hashes >= 1, f"{req.name} has no hash in the lock"
        for extra in req.extras:  # psycopg[binary] -> psycopg-binary
            assert canonicalize_name(f"{req.name}-{extra}") in pins, f"{req.name}[{extra}] not locked"
    assert "setuptools" in pins, "the build stage builds gxsubmit with the locked setuptools"
