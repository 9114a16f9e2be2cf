"""Keeping secrets out of outputs: password redaction in text, and no core dumps of key-holding processes.

Why here and not in each caller: a DSN or a libpq message can surface in a configuration error, a log
line, a readiness reason or a traceback; one function that every such path shares is easier to trust
than masks sprinkled across modules.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

__all__ = ["no_core_dumps", "redact"]

#: ``scheme://user:password@`` in a URL (any scheme: a typo'd ``postgresq://`` holds a password too).
_URL_CREDENTIALS = re.compile(r"(://[^\s:/@]*:)[^\s@]*@")
#: ``user:password@host`` without a scheme.
_BARE_CREDENTIALS = re.compile(r"(^|[\s'\"=])([^\s:/@'\"]+:)(?!//)[^\s@]+@")
#: libpq key=value ``password=...`` (quoted or not) and the URL query form ``?password=...&``.
_KV_PASSWORD = re.compile(r"(?i)(\b(?:pg)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^\s&'\"]+)")

#: A PEM private key (or the start of one, if the text was cut).
_PEM_KEY = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|$)", re.S)

_PR_SET_DUMPABLE = 4


def redact(text: str) -> str:
    """``text`` with every password-like part of a PostgreSQL connection string replaced by ``***`` and
    any PEM private key removed."""
    if ":" not in text and "=" not in text and "-----" not in text:
        return text
    out = _PEM_KEY.sub(r"<\1private key removed>", text)
    out = _URL_CREDENTIALS.sub(r"\1***@", out)
    out = _BARE_CREDENTIALS.sub(r"\1\2***@", out)
    return _KV_PASSWORD.sub(r"\1***", out)


def no_core_dumps() -> None:
    """Make this process's memory (private keys, the database password) never land in a core file.

    RLIMIT_CORE 0 (soft and hard, so nothing in the process can raise it again) and, on Linux,
    ``PR_SET_DUMPABLE 0``, which also keeps other processes of the same user from ptrace or reading
    ``/proc/PID/mem``. Both are best effort: a sandbox that forbids them (systemd's ``@resources``
    filter answers EPERM) has its own ``LimitCORE=0``.
    """
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, OSError, ValueError):
        pass
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
