"""Exception hierarchy of the gateway.

Peer-facing failures (a peer that is not attested, a token that does not verify) are separate
from configuration errors so the listeners can log one structured line per rejected peer and keep
serving, while a bad configuration stops the daemon at start-up.
"""

from __future__ import annotations

from agents.errors import CaiError, ConfigError


class GatewayError(CaiError):
    """Base of gateway errors."""


class GatewayConfigError(ConfigError):
    """The TNG-style JSON configuration is invalid; the message names the offending path."""


class CertFormatError(GatewayError):
    """An attested (rats-tls) certificate or its evidence extension is malformed."""

    http_status = 502


class VerificationFailed(GatewayError):
    """The peer TEE was not verified: evidence, token, policy or key binding did not check out."""

    http_status = 502


class AttestationServiceError(GatewayError):
    """The Trustee attestation service could not be reached or refused the evidence."""

    http_status = 502


class EvidenceUnavailable(GatewayError):
    """Our own evidence could not be obtained from the attestation agent (egress cannot attest)."""

    http_status = 503
