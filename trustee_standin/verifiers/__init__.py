"""Evidence verifiers of the Trustee stand-in (development and tests only).

Importing the package registers Trustee's no-hardware verifiers ``sample`` and ``sampledevice``;
hardware verifiers (``tdx``, ``tpm``, ``nvidia``) are added with :func:`register_verifier`.
"""

from __future__ import annotations

from trustee_standin.verifiers.registry import (
    VerificationError,
    Verifier,
    get_verifier,
    register_verifier,
    registered_tees,
    unregister_verifier,
)
from trustee_standin.verifiers.sample import verify_sample

register_verifier("sample", verify_sample)
import trustee_standin.verifiers.nvidia  # noqa: E402 - registers "nvidia"
import trustee_standin.verifiers.tdx  # noqa: E402 - registers "tdx"
import trustee_standin.verifiers.tpm  # noqa: E402, F401 - registers "tpm"

register_verifier("sampledevice", verify_sample)

__all__ = [
    "VerificationError",
    "Verifier",
    "get_verifier",
    "register_verifier",
    "registered_tees",
    "unregister_verifier",
]
