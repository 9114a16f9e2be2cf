"""Fabric Gateway client: identities, deterministic proposals, grpc.aio client and the error taxonomy."""

from __future__ import annotations

from gxsubmit.fabric.client import ChaincodeEvent, CommitResult, Deadlines, EventBlock, GatewayClient
from gxsubmit.fabric.codes import classify_validation_code, code_name
from gxsubmit.fabric.errors import ErrorClass, ErrorDetail, FabricError
from gxsubmit.fabric.identity import SigningIdentity
from gxsubmit.fabric.proposal import Prepared, Proposal, build_proposal, compute_tx_id, new_nonce

__all__ = [
    "ChaincodeEvent",
    "CommitResult",
    "Deadlines",
    "ErrorClass",
    "ErrorDetail",
    "EventBlock",
    "FabricError",
    "GatewayClient",
    "Prepared",
    "Proposal",
    "SigningIdentity",
    "build_proposal",
    "classify_validation_code",
    "code_name",
    "compute_tx_id",
    "new_nonce",
]
