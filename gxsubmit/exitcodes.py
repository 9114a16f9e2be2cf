"""Process exit codes shared by the CLI, the supervisor and workers."""

from __future__ import annotations

#: Work done, or drained cleanly after SIGTERM.
RET_OK = 0
#: Unexpected failure; the supervisor restarts a worker that exits with it.
RET_FAIL = 1
#: Bad command line.
RET_USAGE = 2
#: A dependency (database, gateway) could not be reached.
RET_UNAVAILABLE = 69
#: EX_CONFIG: bad configuration, wallet or catalogue. The supervisor does not restart it in a loop.
RET_CONFIG = 78
