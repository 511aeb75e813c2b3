"""Every parser that reads outside input, fuzzed: seeds, mutated seeds and raw bytes give a value or
the target's clean, typed error — never a crash (IndexError, KeyError, TypeError, struct.error,
UnicodeError, RecursionError, OverflowError, MemoryError, AssertionError, ...)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agents.errors import CaiError
from tests.fuzz.conftest import fuzz_settings
from tests.fuzz.mutate import mutated
from tests.fuzz.targets import FORBIDDEN, TARGETS, check

NAMES = sorted(TARGETS)

# The issue's list of parsers, each of which must have at least one target here.
REQUIRED = {
    "quotes": ["tdx_quote"], "CCEL/TCG logs": ["ccel_acpi_table", "tcg2_event_log", "aael_text", "aael_tcg2"],
    "SPDM reports": ["spdm_report", "nvidia_opaque_data", "nvidia_cert_chain"],
    "TPM": ["tpm_attest", "tpm_evidence_json"],
    "JWE/JWS/JWT": ["kbs_jwe", "as_token_verify", "kbs_token", "sealed_secret"],
    "KBS responses": ["kbs_challenge", "kbs_attest_response", "kbs_error_body", "kbs_cookies"],
    "gocryptfs": ["gocryptfs_conf", "gocryptfs_file", "gocryptfs_block", "gocryptfs_name", "gocryptfs_longname"],
    "cache/manifest": ["cache_record", "manifest"],
    "OHTTP/BHTTP": ["ohttp_key_config", "ohttp_request", "ohttp_response", "bhttp_request", "bhttp_response"],
    "RA-TLS": ["ratls_certificate", "ratls_evidence_extension"], "TNG config": ["tng_config"],
    "settings": ["cai_env_file", "settings_toml", "settings_json", "cai_options", "inject_manifest"],
}


def test_table_covers_every_parser_named_in_the_issue():
    missing = [name for names in REQUIRED.values() for name in names if name not in TARGETS]
    assert not missing, f"fuzz targets missing from targets.py: {missing}"
    for tgt in TARGETS.values():
        assert tgt.seeds(), f"{tgt.name} has no seed input"
        leaky = [c.__name__ for c in tgt.clean if issubclass(c, FORBIDDEN) and not issubclass(c, CaiError)]
        assert not leaky, f"{tgt.name} declares crash types as clean errors: {leaky}"


@pytest.mark.parametrize("name", NAMES)
def test_seeds_are_accepted(name):
    """The harness reaches the parser: every seed parses (or, where the target says so, is a clean refusal)."""
    tgt = TARGETS[name]
    for index, seed in enumerate(tgt.seeds()):
        outcome = check(name, seed)
        if tgt.valid_seeds:
            assert outcome is None, f"{name} seed {index} was refused: {outcome!r}"


@pytest.mark.parametrize("name", NAMES)
def test_mutated_seeds_fail_cleanly(name):
    tgt = TARGETS[name]

    @fuzz_settings()
    @given(mutated(tgt.seeds(), json_seeds=tgt.json_seeds))
    def run(data):
        check(name, data)

    run()


@pytest.mark.parametrize("name", NAMES)
def test_random_bytes_fail_cleanly(name):
    @fuzz_settings(scale=0.4)
    @given(st.binary(max_size=2048))
    @example(b"")
    def run(data):
        check(name, data)

    run()
