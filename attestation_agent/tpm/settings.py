"""``[aa]`` settings of the TPM attester, importable without loading tpm2-pytss."""

from __future__ import annotations

from pathlib import Path

from agents.settings import Setting
from attestation_agent.tpm import pcr
from attestation_agent.tpm.errors import TpmError

DEFAULT_TCTI = "device:/dev/tpmrm0"
DEFAULT_EVENTLOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
DEFAULT_AAEL = Path("/run/attestation-agent/eventlog")
DEFAULT_RUNTIME_PCR = 23


def pcr_list(values: list[str]) -> list[str]:
    """``0-23`` or ``0,1,7`` style PCR lists."""
    out: list[str] = []
    try:
        for item in values:
            low, _, high = item.partition("-")
            out.extend(str(i) for i in range(int(low), int(high or low) + 1))
        pcr.check_indices(int(i) for i in out)
    except TpmError as exc:
        raise ValueError(exc.message) from None
    return out


#: ``[aa]`` settings for this attester (``CAI_AA_TPM_*``); splice into ``AA_SETTINGS`` to expose them.
TPM_SETTINGS: tuple[Setting, ...] = (
    Setting("tpm_tcti", str, DEFAULT_TCTI, "tpm2-tss TCTI of the TPM: device:/dev/tpmrm0, or "
            "swtpm:host=127.0.0.1,port=2321 for a software TPM (its control port must be port + 1)."),
    Setting("tpm_banks", list, ["SHA1", "SHA256"], "PCR banks to quote, one quote each (Trustee 1.5 format)."),
    Setting("tpm_pcrs", list, ["0-23"], "PCRs to quote: indices or ranges such as 0-23.", validator=pcr_list),
    Setting("tpm_ak_handle", str, None, "Persistent AK handle (hex, e.g. 0x81010002), created under the EK if "
            "absent; unset = a fresh AK per agent start."),
    Setting("tpm_eventlog", str, str(DEFAULT_EVENTLOG), "Firmware TCG event log sent as 'eventlog' when it "
            "exists; 'off' disables."),
    Setting("tpm_aael", str, str(DEFAULT_AAEL), "AA event log of runtime measurements; 'off' disables extends."),
    Setting("tpm_runtime_pcr", int, DEFAULT_RUNTIME_PCR, "SHA-256 PCR that runtime events extend (PCR 17 is "
            "not extendable at locality 0 on vTPMs)."),
)


