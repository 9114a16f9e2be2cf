"""The gateway's health as one worker sees it: every call's outcome feeds the circuit breaker.

One object for the worker's life, shared by the pipeline (each RPC's outcome), the claim loop (the
idle probe's) and the status file (``ok``), so the breaker has one bookkeeper.
"""

from __future__ import annotations

import logging

from gxsubmit.breaker import CircuitBreaker
from gxsubmit.decisions import INFRA_ERROR_CODES
from gxsubmit.fabric import ErrorClass, FabricError
from gxsubmit.metrics import WorkerMetrics

__all__ = ["GatewayHealth"]

#: The pipeline's logger: these lines were always the pipeline's, and log filters name it.
log = logging.getLogger("gxsubmit.pipeline")


class GatewayHealth:
    """Notes gateway answers and failures; opens and closes the breaker."""

    def __init__(self, breaker: CircuitBreaker, metrics: WorkerMetrics) -> None:
        self.breaker = breaker
        self.metrics = metrics
        #: False from a gateway outage until the next answer (the status file's gateway_ok); the breaker
        #: only trips while it is False, so "breaker not closed" implies "not ok" (the idle probe's rule)
        self.ok = True

    def note(self, err: FabricError) -> None:
        """A failed call: an outage counts against the breaker; any other answer means the gateway is up."""
        if err.error_class in (ErrorClass.TRANSIENT, ErrorClass.IN_DOUBT) and (
            err.error_code in INFRA_ERROR_CODES or err.error_code == "DEADLINE_EXCEEDED"
        ):
            self.ok = False
            if self.breaker.record_failure():
                self.metrics.breaker_open.set(1)
                log.warning("Gateway circuit breaker opened; pausing claims", extra={
                    "error": str(err), "cooldown_s": round(self.breaker.remaining(), 3)})
        else:
            self.up()  # the gateway answered (e.g. a chaincode error): it is up

    def note_probe(self, err: FabricError | None) -> None:
        """The outcome of an idle gateway probe (:mod:`gxsubmit.gatewayprobe`), counted like a call's."""
        if err is None:
            self.up()
        else:
            self.note(err)

    def up(self) -> None:
        """A call was answered."""
        self.ok = True
        if not self.breaker.is_closed:
            self.breaker.record_success()
            self.metrics.breaker_open.set(0)
            log.info("Gateway circuit breaker closed; resuming claims")
        else:
            self.breaker.record_success()
