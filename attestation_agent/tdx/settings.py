"""``[aa]`` settings of the TDX attester (``CAI_AA_TDX_*``), importable without side effects.

Splice :data:`TDX_SETTINGS` into the AA's settings schema to expose them; the attester's
registered factory (``attestation_agent.attesters.tdx``) reads them with defaults for any that
are absent, so an AA built without them still gets the kernel's standard paths.
"""

from __future__ import annotations

from agents.settings import Setting

DEFAULT_TSM_ROOT = "/sys/kernel/config/tsm/report"
DEFAULT_CCEL_TABLE = "/sys/firmware/acpi/tables/CCEL"
DEFAULT_CCEL_DATA = "/sys/firmware/acpi/tables/data/CCEL"
DEFAULT_MEASUREMENTS = "/sys/devices/virtual/misc/tdx_guest/measurements"
DEFAULT_GUEST_DEVICE = "/dev/tdx_guest"
DEFAULT_AAEL = "/run/attestation-agent/eventlog"


def _attempts(value: int) -> int:
    if not 1 <= value <= 10:
        raise ValueError("must be between 1 and 10")
    return value


TDX_SETTINGS: tuple[Setting, ...] = (
    Setting("tdx_tsm_root", str, DEFAULT_TSM_ROOT, "configfs-tsm report directory (quotes are requested here)."),
    Setting("tdx_ccel_table", str, DEFAULT_CCEL_TABLE, "ACPI CCEL table (validated when present)."),
    Setting("tdx_ccel_data", str, DEFAULT_CCEL_DATA, "CCEL event log sent as cc_eventlog (Linux >= 6.4); "
            "'off' sends null."),
    Setting("tdx_measurements", str, DEFAULT_MEASUREMENTS, "tdx_guest sysfs measurements directory "
            "(rtmr3:sha384 is extended for runtime events; Linux >= 6.16)."),
    Setting("tdx_guest_device", str, DEFAULT_GUEST_DEVICE, "tdx_guest device, used only for local TD reports."),
    Setting("tdx_aael", str, "off", f"AA event log of runtime measurements (e.g. {DEFAULT_AAEL}), sent as "
            "aa_eventlog and replayed against RTMR3; 'off' (default, like Trustiflux) disables extends."),
    Setting("tdx_quote_attempts", int, 3, "Attempts for transient configfs-tsm errors (EBUSY, timeouts, races).",
            validator=_attempts),
)
