"""External tools some tests need (node, checkov, systemd-analyze, kubectl).

On a laptop without a tool the test is skipped with the reason; under CI (``CI`` set, as
``.ci/run`` is run) the tool is part of the contract, so its absence fails the test instead
of letting a green run hide a check that never ran.
"""

from __future__ import annotations

import contextlib
import os
import resource
from typing import NoReturn

import pytest


def missing_tool(reason: str) -> NoReturn:
    """Skip locally, fail in CI: ``reason`` says which tool and how to get it."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def sockets_available(need: int, spare: int, least: int) -> int:
    """Up to ``need`` sockets a test may open, keeping ``spare`` descriptors for everything else: the
    soft descriptor limit is raised towards the hard one first. Fewer than ``least``: the test cannot
    show what it is for (skip locally, fail in CI, as for a missing tool)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need + spare:
        new = need + spare if hard == resource.RLIM_INFINITY else min(hard, need + spare)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = max(0, min(need, soft - spare))
    if n < least:
        missing_tool(f"the file descriptor limit allows {n} client sockets, the test needs {least} "
                     "(raise it with ulimit -n)")
    return n
