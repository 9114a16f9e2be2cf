"""What the supervisor knows about one identity's worker: its :class:`Slot` and :class:`State`."""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field

from gxsubmit.workerstatus import WorkerStatus

__all__ = ["Slot", "State", "exit_text"]


class State(enum.Enum):
    STARTING = "starting"  # spawned, not yet connected
    RUNNING = "running"  # reported a connected gateway at least once
    BACKOFF = "backoff"  # dead, waiting to be restarted
    CONFIG_ERROR = "config_error"  # exited 78; waits for SIGHUP
    STOPPED = "stopped"  # exited during shutdown or after retirement


@dataclass
class Slot:
    """Everything the supervisor knows about one identity's worker."""

    identity: str
    role: str
    state: State = State.BACKOFF
    pid: int | None = None
    spawned_at: float = 0.0  # time.monotonic()
    spawned_wall: float = 0.0  # time.time(), comparable with the status file's mtime
    restarts: int = 0
    delay: float = 0.0  # next restart delay
    respawn_at: float = 0.0
    last_exit: str | None = None
    reason: str | None = None
    status: WorkerStatus | None = None  # last status file written by the current pid
    beat: float = 0.0  # wall time of the last heartbeat (status mtime or spawn time)
    abort_sent: float | None = None
    kill_sent: bool = False
    ready_once: bool = False
    reload_requested: bool = False  # SIGTERMed by a rolling restart: respawn at once
    retiring: bool = False  # no longer in the catalogue: do not respawn
    pids: list[int] = field(default_factory=list)  # every process this slot ran, for the final release


def exit_text(code: int) -> str:
    """A child's exit as operators read it: ``exit 1`` or ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"
