"""gxsubmit: exactly-once relay from a PostgreSQL outbox to Hyperledger Fabric."""

__version__ = "0.1.0"
