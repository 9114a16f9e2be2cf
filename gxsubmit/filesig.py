"""Change detection for mounted files (wallet, TLS), without importing anything heavy.

The supervisor polls the gateway TLS files with this; importing the wallet module would pull
cryptography into a process that otherwise never needs it (about 10 MB of RSS).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["files_signature"]


def files_signature(paths: Sequence[Path]) -> str:
    """Changes when any of ``paths`` is replaced, rewritten, appears or disappears.

    Kubernetes updates a mounted Secret by swapping the ``..data`` symlink atomically, so the
    visible paths stay the same: include each file's resolved path, inode, mtime and size.
    """
    h = hashlib.sha256()
    for p in paths:
        try:
            real = os.path.realpath(p)
            st = os.stat(p)
            h.update(f"{p.name}|{real}|{st.st_ino}|{st.st_mtime_ns}|{st.st_size}|{st.st_mode}\n".encode())
        except OSError:
            h.update(f"{p.name}|missing\n".encode())
    return h.hexdigest()
