"""A local Trustee (KBS + attestation service + trustee-gateway) stand-in.

FOR DEVELOPMENT AND TESTS ONLY. It is what the test suite and ``cai demo`` talk to when no real
Trustee is reachable; nothing in a production path may import it. It is protocol-exact for KBS
protocol 0.1.0 (openanolis Trustee <= 1.5.x) and 0.4.0 (Trustee >= 1.6 / CoCo >= 0.14) and strict:
it rejects what Trustee rejects, with Trustee's status codes and error bodies, so client code that
passes against it behaves the same against the real service. It reuses the project's sans-IO
protocol core (``attestation_agent.kbs``) so client and server share one definition of every body.
"""

from __future__ import annotations

from trustee_standin.config import StandinConfig
from trustee_standin.faults import Fault, FaultInjector
from trustee_standin.server import StandinServer, build_app
from trustee_standin.verifiers import VerificationError, register_verifier

__all__ = [
    "Fault",
    "FaultInjector",
    "StandinConfig",
    "StandinServer",
    "VerificationError",
    "build_app",
    "register_verifier",
]
