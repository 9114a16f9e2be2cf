"""The worker <-> supervisor contract: the status file and the row-owner id.

Both sides of the process boundary import this module, so the file one writes is the file the
other reads: a worker writes ``<runtime_dir>/worker-<identity>.json`` atomically every heartbeat
interval (its mtime is the heartbeat, its fields feed readiness and ``/status``); the supervisor
reads it back as a :class:`WorkerStatus`. Rows a worker claims carry its :func:`owner_id` in
``locked_by``, which is how the supervisor hands back the rows of a worker that died.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import orjson

__all__ = ["STATUS_GLOB", "WorkerStatus", "owner_id", "read_status", "status_path", "write_status"]

#: Matches every worker status file in a runtime directory (the supervisor removes stale ones at start).
STATUS_GLOB = "worker-*.json"


def status_path(runtime_dir: Path, identity: str) -> Path:
    """Where the worker for ``identity`` writes its status (and so its heartbeat)."""
    return Path(runtime_dir) / f"worker-{identity}.json"


def owner_id(worker_id: str, identity: str, pid: int) -> str:
    """The ``locked_by`` value of one worker process: unique per process, so rows of a dead pid are
    told apart from those of its successor (the supervisor uses ``identity="supervisor"``)."""
    return f"{worker_id}:{identity}:{pid}"


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker's status document, as written on every heartbeat."""

    pid: int
    identity: str
    ts: float  # time.time() of the write
    started_at: float
    ready: bool  # connected and not draining
    db_ok: bool
    gateway_ok: bool
    breaker_open: bool
    in_flight: int
    committed: int
    failed: int
    last_error: str | None
    draining: bool
    cert_not_after: str  # ISO 8601
    commit_stream: bool
    wakeups: str  # how the worker learns of new rows (gxsubmit.wakeups)
    wakeup_warning: str | None  # one line for /status, e.g. LISTEN behind a transaction pooler

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> WorkerStatus:
        """Parse a status file; ``ValueError`` when it is not one (extra keys are ignored)."""
        doc = orjson.loads(data)  # orjson.JSONDecodeError is a ValueError
        if not isinstance(doc, dict):
            raise ValueError("a worker status is a JSON object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in doc:
                raise ValueError(f"worker status lacks {f.name!r}")
            value = doc[f.name]
            if not _fits(value, str(f.type)):
                raise ValueError(f"worker status field {f.name!r} is not {f.type}: {value!r}")
            values[f.name] = float(value) if f.type == "float" else value
        return cls(**values)


_KINDS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "str | None": (str, type(None)),
}


def _fits(value: object, annotation: str) -> bool:
    if isinstance(value, bool) and annotation != "bool":
        return False  # JSON true is not a count
    return isinstance(value, _KINDS[annotation])


def write_status(path: Path, status: WorkerStatus) -> None:
    """Replace the status file atomically (a reader never sees half a file); raises ``OSError``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(status.to_json())
    os.replace(tmp, path)


def read_status(path: Path, pid: int) -> tuple[WorkerStatus | None, float]:
    """The status ``pid`` wrote and the file's mtime; ``(None, 0.0)`` when absent, unreadable or
    written by another process (the previous worker of the identity)."""
    try:
        mtime = path.stat().st_mtime
        status = WorkerStatus.from_json(path.read_bytes())
    except (OSError, ValueError):
        return None, 0.0
    if status.pid != pid:
        return None, 0.0
    return status, mtime
