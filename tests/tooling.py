"""External tools some tests need (node, checkov, systemd-analyze, kubectl).

On a laptop without a tool the test is skipped with the reason; under CI (``CI`` set, as
``.ci/run`` is run) the tool is part of the contract, so its absence fails the test instead
of letting a green run hide a check that never ran.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing_tool(reason: str) -> NoReturn:
    """Skip locally, fail in CI: ``reason`` says which tool and how to get it."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)
