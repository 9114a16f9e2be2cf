"""The circuit breaker's half-open probe for a worker with no command to probe with.

Why: the breaker closes only when a call through it succeeds, and a worker only makes calls for
commands. A replica whose gateway link came back while no work was pending (the other replica took
its rows meanwhile) kept its breaker open and its ``/readyz`` at 503 until a command arrived, possibly
never. This probe is a read that changes nothing: qscc ``GetTransactionByID`` of a made-up transaction
id, the same call ``gxsubmit check`` makes. Any answer from the gateway, even a refusal, means it is up.
"""

from __future__ import annotations

from gxsubmit.breaker import CircuitBreaker
from gxsubmit.fabric import FabricError, GatewayClient, SigningIdentity

__all__ = ["PROBE_TX_ID", "probe_idle_gateway"]

#: 64 hex digits that no transaction has (a real id is a SHA-256 of a nonce and a creator)
PROBE_TX_ID = "0" * 64


async def probe_idle_gateway(
    gateway: GatewayClient, signer: SigningIdentity, channel: str, breaker: CircuitBreaker
) -> bool | FabricError:
    """Take the half-open probe slot and ask the gateway: True if it answered, else its error.

    False without a call when the breaker allows no probe now (closed: none needed; open: still
    cooling down; half-open: another probe is out)."""
    if breaker.is_closed or not breaker.allow():
        return False
    try:
        await gateway.transaction_known(signer, channel=channel, tx_id=PROBE_TX_ID)
    except FabricError as err:
        return err
    return True
