"""JSON-lines logging: one object per line, written with one ``write`` so lines never interleave.

Every process (supervisor, each worker, the emulator) writes to the same stdout. A single
``os.write`` of at most PIPE_BUF bytes is atomic on a pipe, so each record is capped below
4096 bytes by shortening its longest string fields rather than being split.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

from gxsubmit.secrets import redact

__all__ = ["JsonFormatter", "get_logger", "setup_logging"]

_MAX_LINE = 4000
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with ``ts``, ``level``, ``message`` and the extras.

    Cheap per record (a worker logs "Processing command" for every command at info): the static
    fields are built once, the timestamp prefix is cached per second, and the handler takes the
    orjson bytes directly (no str round trip).
    """

    def __init__(self, process: str, identity: str | None) -> None:
        super().__init__()
        self._static: dict[str, Any] = {"process": process, "pid": os.getpid()}
        if identity:
            self._static["identity"] = identity
        self._ts_second = -1
        self._ts_prefix = ""

    def _ts(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._ts_second:
            self._ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._ts_second = second
        return f"{self._ts_prefix}.{int(msecs):03d}Z"

    def document(self, record: logging.LogRecord) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "ts": self._ts(record.created, record.msecs),
            "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
            "message": record.getMessage(),
            "logger": record.name,
            **self._static,
        }
        for key, value in record.__dict__.items():  # the ``extra=`` fields, in the caller's order
            if key not in _RESERVED and key[:1] != "_":
                # error texts can quote a connection string (a driver's or the caller's own words)
                doc[key] = redact(value) if key.endswith("error") and isinstance(value, str) else value
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            doc["error"] = redact(f"{type(exc).__name__}: {exc}")
        return doc

    def format_bytes(self, record: logging.LogRecord) -> bytes:
        """The line as UTF-8 bytes without the newline, at most ``_MAX_LINE`` bytes."""
        return _fit(self.document(record))

    def format(self, record: logging.LogRecord) -> str:
        return self.format_bytes(record).decode()


_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
           logging.ERROR: "error", logging.CRITICAL: "critical"}


def _fit(doc: dict[str, Any]) -> bytes:
    line = orjson.dumps(doc, default=str)
    while len(line) > _MAX_LINE:
        key = max((k for k, v in doc.items() if isinstance(v, str)), key=lambda k: len(doc[k]), default=None)
        if key is None or len(doc[key]) < 64:
            return orjson.dumps({k: doc[k] for k in ("ts", "level", "logger") if k in doc}
                                | {"message": str(doc.get("message", ""))[:1000], "truncated": True})
        doc[key] = doc[key][: len(doc[key]) // 2] + "...[truncated]"
        line = orjson.dumps(doc, default=str)
    return line


class _AtomicStreamHandler(logging.Handler):
    """Writes each formatted record with one ``os.write`` to the file descriptor."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fmt = self.formatter
            if isinstance(fmt, JsonFormatter):
                data = fmt.format_bytes(record) + b"\n"
            else:
                data = (self.format(record) + "\n").encode()
            os.write(self._fd, data)
        except Exception:
            self.handleError(record)


def setup_logging(level: str = "info", *, process: str, identity: str | None = None,
                  stream: Any = None) -> None:
    """Route all logging of this process to JSON lines on stdout (or ``stream``)."""
    fd = (stream or sys.stdout).fileno()
    handler = _AtomicStreamHandler(fd)
    handler.setFormatter(JsonFormatter(process, identity))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # gRPC and asyncio chatter stays at warning unless debugging.
    for noisy in ("asyncio", "grpc", "psycopg"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
