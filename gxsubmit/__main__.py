"""Entry point for ``python -m gxsubmit``."""

from __future__ import annotations

import sys

from gxsubmit.cli import main

if __name__ == "__main__":
    sys.exit(main())
