"""KBS protocol dialects and version negotiation.

Trustee checks the client's ``version`` with an *exact* semver requirement: Trustee <= 1.5.x
accepts only ``0.1.0`` and Trustee >= 1.6 (and CoCo >= 0.14) only ``0.4.0``. The two differ in
the ``/auth`` and ``/attest`` bodies, the runtime-data hash input and the JWE encoding, so the
client speaks one dialect per server and learns it from the version-mismatch error text.
"""

from __future__ import annotations

import enum
import re


class Dialect(enum.StrEnum):
    """A KBS protocol version this suite implements."""

    V0_1_0 = "0.1.0"  # openanolis Trustee <= 1.5.x, Trustiflux <= 1.3
    V0_4_0 = "0.4.0"  # openanolis Trustee >= 1.6, CoCo trustee >= 0.14

    @classmethod
    def parse(cls, text: str) -> Dialect:
        """Return the dialect named by ``text`` (``0.1.0``/``0.4.0``) or raise ValueError."""
        try:
            return cls(text.strip())
        except ValueError:
            raise ValueError(
                f"unsupported KBS protocol version {text!r}; supported: "
                + ", ".join(d.value for d in cls)
            ) from None


# "KBS Client Protocol Version Mismatch: expect =0.1.0 while the request is 0.4.0"
_EXPECT_RE = re.compile(r"expect\s*=\s*v?(\d+\.\d+\.\d+)")

# The first dialect to try. Trustee parses the /auth body before checking the version, and a
# 0.1.0-shaped body (string ``extra-params``) parses on both generations, so probing with 0.1.0
# always yields a readable ``expect =X.Y.Z`` when the server wants the other one.
PROBE_DIALECT = Dialect.V0_1_0


def expected_version(detail: str) -> str | None:
    """Extract the version a KBS demands from its mismatch error detail, if present."""
    match = _EXPECT_RE.search(detail)
    return match.group(1) if match else None
