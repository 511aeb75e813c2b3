"""TPM attester settings: parsed with the shared settings schema, mapped onto TpmAttesterConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.errors import ConfigError
from agents.settings import parse_settings
from attestation_agent.attesters.select import REGISTRY
from attestation_agent.attesters.tpm import TpmAttester, config_from_settings
from attestation_agent.errors import EvidenceError
from attestation_agent.tpm.settings import TPM_SETTINGS


def test_defaults_follow_trustiflux():
    config = config_from_settings(parse_settings({}, TPM_SETTINGS, where="[aa]"))
    assert config.tcti == "device:/dev/tpmrm0"
    assert config.banks == ("SHA1", "SHA256") and config.pcrs == tuple(range(24))
    assert config.ak_handle is None and config.runtime_pcr == 23
    assert config.eventlog_path == Path("/sys/kernel/security/tpm0/binary_bios_measurements")


def test_environment_style_values():
    raw = {"tpm_tcti": "swtpm:host=127.0.0.1,port=2321", "tpm_banks": "sha256", "tpm_pcrs": "0-7, 23",
           "tpm_ak_handle": "0x81010002", "tpm_eventlog": "off", "tpm_aael": "/run/cai/aael", "tpm_runtime_pcr": "16"}
    config = config_from_settings(parse_settings(raw, TPM_SETTINGS, where="[aa]"))
    assert config.banks == ("SHA256",) and config.pcrs == (*range(8), 23)
    assert config.ak_handle == 0x81010002 and config.eventlog_path is None
    assert config.aael_path == Path("/run/cai/aael") and config.runtime_pcr == 16


@pytest.mark.parametrize("raw, error", [
    ({"tpm_pcrs": "0-30"}, ConfigError),
    ({"tpm_ak_handle": "zz"}, EvidenceError),
    ({"tpm_banks": "md5"}, EvidenceError),
])
def test_bad_values_are_refused(raw, error):
    with pytest.raises(error):
        config_from_settings(parse_settings(raw, TPM_SETTINGS, where="[aa]"))


def test_tpm_is_registered_for_selection():
    attester = REGISTRY.get("tpm")(parse_settings({"tpm_tcti": "swtpm:host=127.0.0.1,port=2400"}, TPM_SETTINGS,
                                                 where="[aa]"))
    assert isinstance(attester, TpmAttester)
    assert attester.config.tcti == "swtpm:host=127.0.0.1,port=2400"
