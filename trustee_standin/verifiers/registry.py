"""Pluggable evidence verifiers of the Trustee stand-in, keyed by TEE name.

Development and tests only. A verifier is ``fn(evidence, expected_report_data) -> claims``:
``evidence`` is the decoded evidence JSON, ``expected_report_data`` the binding digest the
evidence must carry (48-byte SHA-384 on the KBS path; raw bytes or any digest on the AS path) or
None when the caller provided no runtime data (the AS then skips the binding check, as Trustee's
``ReportData::NotProvided`` does). It returns the verifier's claims (Trustee's
``TeeEvidenceParsedClaim``: a JSON object, optionally with ``report_data``/``init_data``) or raises
:class:`VerificationError`. TDX, TPM and GPU verifiers plug in through :func:`register_verifier`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.errors import CaiError

Verifier = Callable[[Any, bytes | None], dict[str, Any]]


class VerificationError(CaiError):
    """Evidence did not verify (bad format, bad signature, or wrong runtime-data binding)."""

    http_status = 403


_REGISTRY: dict[str, Verifier] = {}


def register_verifier(tee: str, fn: Verifier, *, replace: bool = True) -> None:
    """Make ``fn`` the verifier for TEE type ``tee`` (wire name, e.g. ``tdx``, ``sampledevice``)."""
    if not isinstance(tee, str) or not tee:
        raise ValueError("verifier TEE name must be a non-empty string")
    if not replace and tee in _REGISTRY:
        raise ValueError(f"a verifier for TEE {tee!r} is already registered")
    _REGISTRY[tee] = fn


def unregister_verifier(tee: str) -> None:
    _REGISTRY.pop(tee, None)


def get_verifier(tee: str) -> Verifier | None:
    return _REGISTRY.get(tee)


def registered_tees() -> frozenset[str]:
    return frozenset(_REGISTRY)
