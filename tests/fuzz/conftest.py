"""Hypothesis profiles for the fuzz campaign.

``CAI_FUZZ_PROFILE=ci`` (default) keeps every target bounded so the whole directory runs in CI in
about a minute; ``CAI_FUZZ_PROFILE=long`` is the local campaign (tens of thousands of examples per
target). ``CAI_FUZZ_EXAMPLES=N`` overrides the example count of either profile. No example database
is kept between runs: a failure is reproduced from the printed ``@reproduce_failure``/falsifying
example, and then kept for good as a file in ``tests/fuzz/corpus/`` (see docs/fuzzing.md).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # loaded CI machines: no per-example timing; pytest-timeout bounds a hang
    "database": None,
    "derandomize": False,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                              HealthCheck.large_base_example],
}

PROFILES = {"ci": 80, "long": 20_000}

for _name, _examples in PROFILES.items():
    settings.register_profile(f"cai-fuzz-{_name}", max_examples=_examples, **_COMMON)

PROFILE = os.environ.get("CAI_FUZZ_PROFILE", "ci")
if PROFILE not in PROFILES:
    raise ValueError(f"CAI_FUZZ_PROFILE={PROFILE!r} is not one of {sorted(PROFILES)}")


def max_examples() -> int:
    """Examples per fuzz test: the profile's, or ``CAI_FUZZ_EXAMPLES``."""
    override = os.environ.get("CAI_FUZZ_EXAMPLES")
    if override is not None:
        if not override.isdigit() or int(override) < 1:
            raise ValueError(f"CAI_FUZZ_EXAMPLES={override!r} must be a positive integer")
        return int(override)
    return PROFILES[PROFILE]


def fuzz_settings(scale: float = 1.0) -> settings:
    """The active profile with ``scale`` times its examples (at least 10)."""
    return settings(settings.get_profile(f"cai-fuzz-{PROFILE}"), max_examples=max(10, int(max_examples() * scale)))
