"""The Intel TDX attester: configfs-tsm quote, CCEL boot log, and the AA runtime event log.

Evidence is the JSON Trustee 1.5's ``tdx`` verifier parses (and upstream CoCo's, which ignores the
extra field)::

    {"cc_eventlog": "<base64 std of the trimmed CCEL>" | null,
     "quote": "<base64 std of the DCAP quote>",
     "aa_eventlog": "<AAEL text>" | null}

Device evidence (``gpu_evidence``) is added by the composition (``LocalEvidence`` embeds it for
protocol 0.1.0), not here.

* The quote comes from configfs-tsm only (:mod:`attestation_agent.tdx.tsm`), REPORTDATA =
  ``canonical.tdx_report_data(report_data)`` (the binding digest zero-padded to 64 bytes). The
  quote is parsed before it is sent and its REPORTDATA compared with what we wrote, so a
  misbehaving provider or a write race is caught here, with a clear error, rather than as an
  opaque rejection by the KBS.
* ``cc_eventlog`` is the CCEL data trimmed of its 0xFF padding; null when the kernel does not
  expose it (< 6.4). A CCEL that exists but does not parse is an error: sending it would fail
  verification anyway.
* ``aa_eventlog`` is sent only when the runtime event log is enabled and replays to RTMR3 *of
  the quote being sent*; quote and log are taken under one lock so no extend can slip between.
* :meth:`TdxAttester.td_report` reads a raw TD report through ``/dev/tdx_guest``
  ``TDX_CMD_GET_REPORT0``; it is for local inspection only (not remote evidence).

Every blocking file operation runs in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.logsetup import get_logger
from attestation_agent import eventlog
from attestation_agent.attesters.base import Attester, MeasurementResult, RuntimeEvent, check_report_data
from attestation_agent.attesters.select import REGISTRY
from attestation_agent.errors import EvidenceError
from attestation_agent.kbs import canonical
from attestation_agent.kbs.encoding import b64std_encode
from attestation_agent.tdx import ccel, guest_device, rtmr, runtime_log, tsm
from attestation_agent.tdx import settings as tdx_settings
from attestation_agent.tdx.errors import MeasurementError, TsmError
from attestation_agent.tdx.quote import parse_quote
from attestation_agent.tdx.rtmr import MeasurementRegister
from attestation_agent.tdx.tsm import TsmFilesystem

log = get_logger(__name__)

#: CoCo AA's default runtime-measurement register is PCR 17, which maps to RTMR3 on TDX.
RUNTIME_PCR = 17
RUNTIME_RTMR = 3


@dataclass(frozen=True)
class TdxConfig:
    """Kernel paths (configurable so tests point them at an emulated tree) and switches."""

    tsm_root: Path = tsm.TSM_REPORT_ROOT
    ccel_table: Path = Path("/sys/firmware/acpi/tables/CCEL")
    ccel_data: Path = Path("/sys/firmware/acpi/tables/data/CCEL")
    measurements_dir: Path = rtmr.MEASUREMENTS_DIR
    tdx_guest_device: Path = guest_device.TDX_GUEST_DEVICE
    eventlog_path: Path = runtime_log.DEFAULT_PATH
    #: keep the AA event log and extend RTMR3 (Trustiflux ``enable_eventlog``; off by default there too)
    enable_eventlog: bool = False
    #: attempts for transient configfs-tsm errors (EBUSY, EINTR, ETIMEDOUT, generation conflict)
    quote_attempts: int = 3
    retry_delay: float = 0.5


class TdxAttester(Attester):
    tee_type = "tdx"

    def __init__(self, config: TdxConfig | None = None, *, tsm_fs: TsmFilesystem | None = None,
                 register: MeasurementRegister | None = None) -> None:
        self.config = config or TdxConfig()
        self._tsm_fs = tsm_fs or tsm.OsTsmFilesystem()
        self._register_injected = register is not None
        self._register = register or rtmr.SysfsRtmr(rtmr.rtmr_path(RUNTIME_RTMR, self.config.measurements_dir))
        self._runtime_log: runtime_log.RuntimeEventLog | None = None
        self._lock = asyncio.Lock()

    # -- evidence ------------------------------------------------------------------------------

    async def evidence(self, report_data: bytes) -> dict[str, Any]:
        inblob = canonical.tdx_report_data(check_report_data(report_data))
        async with self._lock:
            if self.config.enable_eventlog and self._eventlog_supported():
                await self._ensure_log()  # first start extends RTMR3 (INIT): do it before quoting
            quote = await self._quote(inblob)
            parsed = parse_quote(quote)
            if parsed.report_data != inblob:
                raise EvidenceError("the TDX quote from configfs-tsm does not carry the report data we wrote",
                                    hint="another process raced on the report directory, or the provider is "
                                         "broken; retry, and check nothing else uses configfs-tsm")
            aa_eventlog = await self._aa_eventlog_for(parsed.rtmrs[RUNTIME_RTMR])
        cc_eventlog = await asyncio.to_thread(self._read_ccel)
        return {
            "cc_eventlog": b64std_encode(cc_eventlog) if cc_eventlog is not None else None,
            "quote": b64std_encode(quote),
            "aa_eventlog": aa_eventlog,
        }

    async def _quote(self, inblob: bytes) -> bytes:
        attempts = max(1, self.config.quote_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await asyncio.to_thread(tsm.get_quote, inblob, root=self.config.tsm_root, fs=self._tsm_fs)
            except TsmError as exc:
                if not exc.retryable or attempt == attempts:
                    raise
                log.warning("tdx.quote_retry", attempt=attempt, error=exc.message)
                await asyncio.sleep(self.config.retry_delay * attempt)
        raise AssertionError("unreachable")

    def _read_ccel(self) -> bytes | None:
        data_path = self.config.ccel_data
        if not data_path.exists():
            log.warning("tdx.no_ccel", path=str(data_path),
                        hint="the kernel does not expose the CCEL (needs >= 6.4); boot measurements are not sent")
            return None
        if self.config.ccel_table.exists():
            table = ccel.parse_acpi_table(self._read_bounded(self.config.ccel_table, ccel.ACPI_TABLE_SIZE))
            if table.cc_type != ccel.CC_TYPE_TDX:
                raise EvidenceError(f"CCEL table {self.config.ccel_table} is for CC type {table.cc_type}, not TDX (2)")
        return ccel.trim(self._read_bounded(data_path, ccel.MAX_EVENT_LOG_SIZE))

    @staticmethod
    def _read_bounded(path: Path, limit: int) -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise EvidenceError(f"reading {path} failed: {exc.strerror or exc}",
                                hint="the attestation agent must run as root to read ACPI tables") from None
        if len(data) > limit:
            raise EvidenceError(f"{path} is larger than {limit} bytes")
        return data

    # -- runtime measurement ---------------------------------------------------------------------

    def _eventlog_supported(self) -> bool:
        return self._register_injected or self._register.path.exists()  # type: ignore[attr-defined]

    async def _ensure_log(self) -> runtime_log.RuntimeEventLog:
        if self._runtime_log is None:
            candidate = runtime_log.RuntimeEventLog(self.config.eventlog_path, self._register)
            await asyncio.to_thread(candidate.open)
            self._runtime_log = candidate
            log.info("tdx.eventlog_ready", path=str(self.config.eventlog_path))
        return self._runtime_log

    async def _aa_eventlog_for(self, rtmr3: bytes) -> str | None:
        if not self.config.enable_eventlog or not self._eventlog_supported():
            return None
        runtime = await self._ensure_log()
        text, parsed = await asyncio.to_thread(runtime.snapshot)
        if not parsed.matches(rtmr3):
            log.warning("tdx.eventlog_mismatch", hint="the AA event log does not replay to RTMR3 of the quote; "
                        "it is not sent, so policies relying on AA.eventlog claims will fail")
            return None
        return text

    async def extend_runtime_measurement(self, event: RuntimeEvent) -> MeasurementResult:
        if not self.config.enable_eventlog:
            return MeasurementResult.NOT_ENABLED
        if event.register_index not in (None, RUNTIME_PCR):
            raise MeasurementError(f"runtime measurements go to PCR {RUNTIME_PCR} (RTMR3) on TDX, not register "
                                   f"{event.register_index}", hint="omit register_index or use 17")
        if not self._eventlog_supported():
            return MeasurementResult.NOT_SUPPORTED
        entry = eventlog.make_event(event.domain, event.operation, event.content)
        async with self._lock:
            runtime = await self._ensure_log()
            await asyncio.to_thread(runtime.append, entry)
        return MeasurementResult.OK

    # -- local TD report -------------------------------------------------------------------------

    async def td_report(self, report_data: bytes) -> bytes:
        """Raw 1024-byte TDREPORT via ``/dev/tdx_guest`` (local use only; parse with
        :func:`attestation_agent.tdx.td_report.parse_td_report`)."""
        inblob = canonical.tdx_report_data(check_report_data(report_data))
        return await asyncio.to_thread(guest_device.get_td_report, inblob, self.config.tdx_guest_device)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tsm_root": str(self.config.tsm_root),
                "ccel": str(self.config.ccel_data), "eventlog": self.config.enable_eventlog}


def config_from_settings(settings: Mapping[str, Any]) -> TdxConfig:
    """A :class:`TdxConfig` from ``[aa]`` settings (:data:`attestation_agent.tdx.settings.TDX_SETTINGS`);
    absent keys take the kernel's standard paths."""

    def get(name: str, default: Any) -> Any:
        value = settings.get(name)
        return default if value is None else value

    aael_path = str(get("tdx_aael", "off"))
    ccel_data = str(get("tdx_ccel_data", tdx_settings.DEFAULT_CCEL_DATA))
    return TdxConfig(
        tsm_root=Path(get("tdx_tsm_root", tdx_settings.DEFAULT_TSM_ROOT)),
        ccel_table=Path(get("tdx_ccel_table", tdx_settings.DEFAULT_CCEL_TABLE)),
        ccel_data=Path("/nonexistent/ccel-disabled") if ccel_data == "off" else Path(ccel_data),
        measurements_dir=Path(get("tdx_measurements", tdx_settings.DEFAULT_MEASUREMENTS)),
        tdx_guest_device=Path(get("tdx_guest_device", tdx_settings.DEFAULT_GUEST_DEVICE)),
        eventlog_path=Path(tdx_settings.DEFAULT_AAEL if aael_path == "off" else aael_path),
        enable_eventlog=aael_path != "off",
        quote_attempts=int(get("tdx_quote_attempts", 3)),
    )


REGISTRY.register("tdx", lambda settings: TdxAttester(config_from_settings(settings)))
