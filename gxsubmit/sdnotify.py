"""systemd notify protocol (``Type=notify``) without a dependency on libsystemd.

The protocol is one datagram per message on the unix socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` means the Linux abstract namespace). Sending never raises: a supervisor
must not die because systemd went away or the socket filled up.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1`` and ``STOPPING=1`` to systemd.

    Args:
        socket_path: the value of ``$NOTIFY_SOCKET`` (None or "" disables every call).
        watchdog_usec: the value of ``$WATCHDOG_USEC`` (None or 0: no watchdog).
    """

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        if socket_path:
            # Abstract namespace sockets are spelled with '@' in the env var and '\0' on the wire.
            self._address = b"\0" + socket_path[1:].encode() if socket_path.startswith("@") else socket_path
        self.watchdog_interval: float | None = None
        if watchdog_usec and watchdog_usec > 0:
            # systemd's advice: ping at half the timeout.
            self.watchdog_interval = watchdog_usec / 2_000_000
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """Build from systemd's variables (its protocol, not gxsubmit configuration)."""
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process systemd expects pings from.
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(environ.get("NOTIFY_SOCKET"), watchdog)

    def notify(self, message: str) -> bool:
        """Send one state string (``KEY=VALUE`` lines); return False when it could not be sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the supervisor loop on a full receive queue: drop the message instead.
                self._sock.setblocking(False)
            self._sock.sendto(message.encode(), self._address)
            return True
        except OSError:
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
