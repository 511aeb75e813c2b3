"""Settings of the attestation agent (``[aa]`` in the config file, ``CAI_AA_*`` in the environment)."""

from __future__ import annotations

from agents import peercred, validators
from agents.settings import Setting
from attestation_agent.kbs.trust import KBS_CA_CERT_DOC
from attestation_agent.nvidia.settings import GPU_SETTINGS
from attestation_agent.tdx.settings import TDX_SETTINGS
from attestation_agent.tpm.settings import TPM_SETTINGS

DEFAULT_SOCKET = "/run/cai/aa.sock"
DEFAULT_REST_LISTEN = "127.0.0.1:8006"


def _listen(value: str) -> str:
    if value in ("", "off"):
        return "off"
    return validators.host_port(value)


AA_SETTINGS: tuple[Setting, ...] = (
    Setting("socket", str, DEFAULT_SOCKET, "Unix socket of the AA API (used by the data hub and gateway).",
            validator=validators.absolute_path),
    Setting(peercred.SETTING, list, None, peercred.SETTING_DOC, validator=peercred.validate_allowed_peers),
    Setting("rest_listen", str, DEFAULT_REST_LISTEN,
            "host:port of the CoCo api-server-rest compatible listener (GET /aa/token, /aa/evidence); "
            "'off' disables it. Only loopback clients are served.", validator=_listen),
    Setting("cdh_socket", str, "/run/cai/cdh.sock", "Data hub socket that GET /cdh/resource/... on the "
            "rest_listen port is forwarded to (api-server-rest serves /aa and /cdh on one port); 'off' disables.",
            validator=lambda v: v if v == "off" else validators.absolute_path(v)),
    Setting("tee", str, "auto", "TEE to attest with: auto (detect hardware), tdx, tpm, or sample.",
            choices=("auto", "tdx", "tpm", "sample")),
    Setting("allow_sample", bool, False,
            "Allow the sample TEE (no hardware root of trust). Development and tests only."),
    Setting("kbs_url", str, None, "Trustee KBS base URL; defaults to TRUSTEE_URL from cai.env.",
            validator=validators.http_url),
    Setting("kbs_dialect", str, "auto", "KBS protocol version: auto (detect), 0.1.0 (Trustee <= 1.5), "
            "0.4.0 (Trustee >= 1.6).", choices=("auto", "0.1.0", "0.4.0")),
    Setting("kbs_key_algorithm", str, "auto", "TEE key algorithm for resource wrapping: auto (RSA1_5 for 0.1.0, "
            "ECDH-ES+A256KW for 0.4.0), RSA1_5, RSA-OAEP-256 or ECDH-ES+A256KW.",
            choices=("auto", "RSA1_5", "RSA-OAEP-256", "ECDH-ES+A256KW")),
    Setting("kbs_timeout", float, 30.0, "Seconds to wait for each KBS request."),
    Setting("kbs_ca_cert", str, None, KBS_CA_CERT_DOC, validator=validators.absolute_path),
    Setting("log_level", str, "info", "Log level.", choices=("debug", "info", "warning", "error")),
    Setting("log_format", str, "json", "Log format: json or console.", choices=("json", "console")),
    *TDX_SETTINGS,
    *TPM_SETTINGS,
    *GPU_SETTINGS,
)
