"""gxsubmit: exactly-once relay from a PostgreSQL outbox to Hyperledger Fabric."""
from __future__ import annotations

__version__ = "0.1.0"
