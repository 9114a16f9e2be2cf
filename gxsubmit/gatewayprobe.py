"""The circuit breaker's half-open probe for a worker with no command to probe with.

Why: the breaker closes only when a call through it succeeds, and a worker only makes calls for
commands. A replica whose gateway link came back while no work was pending (the other replica took
its rows meanwhile) kept its breaker open and its ``/readyz`` at 503 until a command arrived, possibly
never. The same held for one timed-out call below the breaker's threshold: the breaker stayed closed
and /readyz said "gateway unavailable" for good. So the probe runs whenever an idle worker shows its
gateway down, whatever the breaker's state (a breaker only trips on such failures). The probe is a read
that changes nothing: qscc ``GetTransactionByID`` of a made-up transaction id, the same call ``gxsubmit
check`` makes. Any answer from the gateway, even a refusal, means it is up.
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
    """Ask the gateway, through the breaker: True if it answered, else its error.

    For a worker that shows its gateway down (its last call failed) and has nothing to send: the breaker
    may still be closed (fewer failures than its threshold) or half-open (this takes the probe slot).
    False without a call when the breaker allows none now (open: still cooling down; half-open: another
    probe is out)."""
    if not breaker.allow():
        return False
    try:
        await gateway.transaction_known(signer, channel=channel, tx_id=PROBE_TX_ID)
    except FabricError as err:
        return err
    return True
