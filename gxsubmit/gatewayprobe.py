"""The circuit breaker's half-open probe for a worker with no command to probe with.

Why: the breaker closes only when a call through it succeeds, and a worker only makes calls for
commands. A replica whose gateway link came back while no work was pending (the other replica took
its rows meanwhile) kept its breaker open and its ``/readyz`` at 503 until a command arrived, possibly
never. The same held for one timed-out call below the breaker's threshold: the breaker stayed closed
and /readyz said "gateway unavailable" for good. This probe is a read that changes nothing: qscc
``GetTransactionByID`` of a made-up transaction id, the same call ``gxsubmit check`` makes. Any answer
from the gateway, even a refusal, means it is up.
"""

from __future__ import annotations

from gxsubmit.breaker import CircuitBreaker
from gxsubmit.fabric import FabricError, GatewayClient, SigningIdentity

__all__ = ["PROBE_TX_ID", "probe_idle_gateway"]

#: 64 hex digits that no transaction has (a real id is a SHA-256 of a nonce and a creator)
PROBE_TX_ID = "0" * 64


async def probe_idle_gateway(
    gateway: GatewayClient, signer: SigningIdentity, channel: str, breaker: CircuitBreaker, *,
    after_failure: bool = False,
) -> bool | FabricError:
    """Take the half-open probe slot and ask the gateway: True if it answered, else its error.

    ``after_failure``: the last call failed, so /readyz shows the gateway down; with the breaker still
    closed (fewer failures than its threshold) nothing else would ever ask again while idle.

    False without a call when no probe is due now (closed: none needed unless ``after_failure``; open:
    still cooling down; half-open: another probe is out)."""
    if breaker.is_closed and not after_failure:
        return False
    if not breaker.allow():
        return False
    try:
        await gateway.transaction_known(signer, channel=channel, tx_id=PROBE_TX_ID)
    except FabricError as err:
        return err
    return True
