"""Exception hierarchy of the attestation agent and its Trustee KBS client.

Every message says what failed, where (the Trustee URL or resource path), and what to do.
Messages never contain secret material: no tokens, cookies, keys or resource values.
"""

from __future__ import annotations

from agents.errors import CaiError


class AttestationError(CaiError):
    """Base class for every attestation-agent failure."""

    http_status = 500


class UnsupportedTokenTypeError(AttestationError):
    """A token type the agent does not issue was asked for (the client's mistake)."""

    http_status = 400


class EvidenceError(AttestationError):
    """The TEE evidence could not be produced (hardware interface missing or misbehaving)."""

    http_status = 503


class AttesterNotAllowedError(AttestationError):
    """A development-only attester (``sample``) was selected without being explicitly allowed."""

    http_status = 503


class ProtocolError(AttestationError):
    """Bytes from a peer do not follow the KBS protocol (bad JSON, missing fields, oversize)."""

    http_status = 502


class JweError(ProtocolError):
    """A JWE resource response could not be decrypted or authenticated."""


class KbsError(AttestationError):
    """The Trustee KBS answered with an error, or could not be reached."""

    http_status = 502

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None,
                 error_type: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.error_type = error_type


class KbsNotConfiguredError(KbsError):
    """No Trustee URL was configured, so nothing can be attested to."""

    http_status = 503


class KbsUnavailableError(KbsError):
    """Connection refused, timeout, or 5xx from the KBS (retryable)."""

    http_status = 503


class KbsVersionMismatchError(KbsError):
    """The KBS speaks a protocol version this client does not implement."""


class KbsAttestationRejectedError(KbsError):
    """The KBS refused the evidence (verifier or attestation policy said no)."""

    http_status = 403


class KbsUnauthorizedError(KbsError):
    """The session or token was not accepted (expired, KBS restarted)."""

    http_status = 401


class KbsPolicyDeniedError(KbsError):
    """The KBS resource policy denies this resource to this TEE."""

    http_status = 403


class KbsResourceNotFoundError(KbsError):
    """The resource does not exist (Trustee 1.5 reports this as a 500 backend error)."""

    http_status = 404
