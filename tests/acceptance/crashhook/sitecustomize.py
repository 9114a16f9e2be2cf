"""Test-only: a row that kills its worker, for the crash-loop test (tests/acceptance/test_hostile_rows.py).

Python imports ``sitecustomize`` at start-up from the path, so only a process started with this folder on
PYTHONPATH (the test's supervisor and its workers) gets the hook; nothing in the package can reach it.
In a worker, building the arguments of a payload whose ``userId`` is ``crash-me`` SIGKILLs the process
(as the kernel's OOM killer would), and ``hang-me`` blocks the event loop until the watchdog kills it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import resource
import signal
import sys
import time
from typing import Any

_TARGET = "gxsubmit.catalog"


def _patch(module: Any) -> None:
    original = module.Route.build_args

    def build_args(self: Any, payload: Any) -> Any:
        user = payload.get("userId") if isinstance(payload, dict) else None
        if user == "crash-me":
            os.kill(os.getpid(), signal.SIGKILL)
        if user == "hang-me":
            time.sleep(3600)  # the fault under test (a worker that stops answering), not a wait: it is killed
        return original(self, payload)

    module.Route.build_args = build_args


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def patched(module: Any) -> None:
            exec_module(module)
            _patch(module)

        loader.exec_module = patched  # type: ignore[method-assign]  # the point: wrap the loader
        return spec


if "worker" in sys.argv:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.meta_path.insert(0, _Finder())
