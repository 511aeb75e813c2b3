"""Platform detection and attester selection — fail closed.

Detection follows Trustiflux's order for the platforms this suite targets (TDX through
configfs-tsm or ``/dev/tdx_guest``, then a TPM). Unlike Trustiflux, finding no hardware does
*not* fall back to ``sample``: that would hand secrets to an unattested machine. ``sample`` is
used only when the configuration allows it explicitly.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation_agent.attesters.base import Attester
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.errors import AttesterNotAllowedError, EvidenceError


@dataclass(frozen=True)
class PlatformPaths:
    """Kernel interfaces probed for TEE hardware; configurable so tests can emulate them."""

    configfs_tsm: Path = Path("/sys/kernel/config/tsm/report")
    tdx_guest_device: Path = Path("/dev/tdx_guest")
    tpm_device: Path = Path("/dev/tpmrm0")


def _tsm_provider_is_tdx(root: Path) -> bool:
    """configfs-tsm exposes the provider only inside a report directory; probe one."""
    if not root.is_dir():
        return False
    probe = root / f"cai-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "provider").read_text().strip() == "tdx_guest"
    except OSError:
        return False
    finally:
        try:
            probe.rmdir()
        except OSError:
            pass


def detect_platform(paths: PlatformPaths | None = None) -> str | None:
    """Name of the TEE this machine offers, or None when there is no TEE hardware."""
    paths = paths or PlatformPaths()
    if _tsm_provider_is_tdx(paths.configfs_tsm) or paths.tdx_guest_device.exists():
        return "tdx"
    if paths.tpm_device.exists():
        return "tpm"
    return None


AttesterFactory = Callable[[Mapping[str, Any]], Attester]

#: Attester modules imported only when their TEE is selected: a TDX VM need not load tpm2-pytss.
LAZY_MODULES = {
    "tdx": "attestation_agent.attesters.tdx",
    "tpm": "attestation_agent.attesters.tpm",
}


@dataclass
class AttesterRegistry:
    """Factories by TEE name, each building its attester from the ``[aa]`` settings."""

    factories: dict[str, AttesterFactory] = field(default_factory=dict)
    lazy: dict[str, str] = field(default_factory=lambda: dict(LAZY_MODULES))

    def register(self, tee: str, factory: AttesterFactory) -> None:
        self.factories[tee] = factory

    def get(self, tee: str) -> AttesterFactory | None:
        if tee not in self.factories and tee in self.lazy:
            importlib.import_module(self.lazy[tee])  # the module registers itself
        return self.factories.get(tee)

    def names(self) -> list[str]:
        return sorted(set(self.factories) | set(self.lazy))


REGISTRY = AttesterRegistry({"sample": lambda _settings: SampleAttester()})


def select_attester(
    tee: str = "auto",
    *,
    allow_sample: bool = False,
    paths: PlatformPaths | None = None,
    registry: AttesterRegistry = REGISTRY,
    settings: Mapping[str, Any] | None = None,
) -> Attester:
    """Return the attester for ``tee`` (``auto`` = detect), refusing ``sample`` unless allowed."""
    name = tee
    if tee == "auto":
        detected = detect_platform(paths)
        if detected is None:
            if not allow_sample:
                raise AttesterNotAllowedError(
                    "no TEE hardware found (no configfs-tsm tdx_guest provider, no /dev/tdx_guest, no TPM)",
                    hint="run inside a TDX confidential VM; for local development only, allow the "
                    "sample TEE with --allow-sample (or allow_sample = true in [aa])",
                )
            name = "sample"
        else:
            name = detected
    if name == "sample" and not allow_sample:
        raise AttesterNotAllowedError(
            "the sample TEE was requested but is not allowed: its evidence proves nothing",
            hint="set allow_sample = true in [aa] (or pass --allow-sample) for development and tests only",
        )
    factory = registry.get(name)
    if factory is None:
        raise EvidenceError(
            f"no attester is available for TEE {name!r} in this build",
            hint="known TEEs: " + ", ".join(registry.names()),
        )
    return factory(settings or {})
