"""TpmAttester against a real swtpm, checked by the stand-in TPM verifier and through KbsClient."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tpm2_pytss import ESAPI, ESYS_TR, TPM2_ALG, TPM2B_NV_PUBLIC, TPMA_NV, TPMS_NV_PUBLIC

import trustee_standin.verifiers.tpm  # noqa: F401  (registers the "tpm" verifier)
from agents.retry import Backoff
from attestation_agent import eventlog
from attestation_agent.attesters.base import MeasurementResult, RuntimeEvent
from attestation_agent.attesters.tpm import TpmAttester, TpmAttesterConfig
from attestation_agent.errors import EvidenceError, KbsAttestationRejectedError
from attestation_agent.evidence import LocalEvidence
from attestation_agent.kbs.client import DialectMemory, KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from tests.conftest import UPSTREAM
from tests.swtpm import SwtpmInstance, swtpm_fixture  # noqa: F401
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer
from trustee_standin.verifiers import VerificationError
from trustee_standin.verifiers.tpm import verify_tpm

REPORT_DATA = hashlib.sha384(b"kbs binding").digest()
MODEL_KEY = "default/aliyun/model-decryption-key"


def attester_for(tpm: SwtpmInstance, tmp_path, **kw) -> TpmAttester:
    kw.setdefault("eventlog_path", None)
    kw.setdefault("aael_path", tmp_path / "aael")
    return TpmAttester(TpmAttesterConfig(tcti=tpm.tcti, **kw))


def b64_flip(text: str, index: int) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


async def test_quote_is_accepted_by_the_standin_verifier(swtpm, tmp_path):
    evidence = await attester_for(swtpm, tmp_path).evidence(REPORT_DATA)
    assert set(evidence) == {"ek_cert", "ak_pubkey", "quote", "eventlog", "aa_eventlog"}
    assert set(evidence["quote"]) == {"SHA1", "SHA256"}
    assert evidence["ak_pubkey"].startswith("-----BEGIN PUBLIC KEY-----\n")
    assert evidence["ek_cert"] is None and evidence["aa_eventlog"] is None and evidence["eventlog"] is None
    assert [len(v) for v in evidence["quote"]["SHA1"]["pcrs"]] == [40] * 24
    claims = verify_tpm(evidence, REPORT_DATA)
    # qualifying data = report data zero-padded to 64 bytes (Trustiflux)
    assert claims["report_data"] == (REPORT_DATA + bytes(16)).hex()
    assert set(claims["pcrs"]["SHA256"]) == {f"pcr{i}" for i in range(24)}


async def test_wrong_nonce_is_rejected(swtpm, tmp_path):
    evidence = await attester_for(swtpm, tmp_path).evidence(REPORT_DATA)
    with pytest.raises(VerificationError, match="REPORT_DATA"):
        verify_tpm(evidence, hashlib.sha384(b"another challenge").digest())


@pytest.mark.parametrize("tamper, message", [
    (lambda q: q["pcrs"].__setitem__(0, "11" * 32), "Digest in Quote"),
    (lambda q: q.__setitem__("attest_sig", b64_flip(q["attest_sig"], 5)), "signature"),
    (lambda q: q.__setitem__("attest_body", b64_flip(q["attest_body"], 40)), "signature"),
])
async def test_tampered_quote_is_rejected(swtpm, tmp_path, tamper, message):
    evidence = await attester_for(swtpm, tmp_path).evidence(REPORT_DATA)
    tamper(evidence["quote"]["SHA256"])
    with pytest.raises(VerificationError, match=message):
        verify_tpm(evidence, REPORT_DATA)


async def test_quote_signed_by_another_ak_is_rejected(swtpm, tmp_path):
    first = await attester_for(swtpm, tmp_path).evidence(REPORT_DATA)
    second = await attester_for(swtpm, tmp_path).evidence(REPORT_DATA)
    assert first["ak_pubkey"] != second["ak_pubkey"]  # a fresh AK per attester instance
    first["ak_pubkey"] = second["ak_pubkey"]
    with pytest.raises(VerificationError, match="signature"):
        verify_tpm(first, REPORT_DATA)


async def test_persistent_ak_is_created_once_and_reused(swtpm, tmp_path):
    one = await attester_for(swtpm, tmp_path, ak_handle=0x81010002, banks=("SHA256",)).evidence(REPORT_DATA)
    two = await attester_for(swtpm, tmp_path, ak_handle=0x81010002, banks=("SHA256",)).evidence(REPORT_DATA)
    assert one["ak_pubkey"] == two["ak_pubkey"]
    assert list(two["quote"]) == ["SHA256"]
    verify_tpm(two, REPORT_DATA)


async def test_runtime_events_extend_pcr23_and_replay(swtpm, tmp_path):
    attester = attester_for(swtpm, tmp_path)
    for content in ("model-v1", "sha256:abc"):
        result = await attester.extend_runtime_measurement(RuntimeEvent("github.com/cai", "load_model", content))
        assert result is MeasurementResult.OK
    evidence = await attester.evidence(REPORT_DATA)
    log = eventlog.parse_text(evidence["aa_eventlog"])
    assert log.init_value == bytes(32) and len(log.events) == 2
    claims = verify_tpm(evidence, REPORT_DATA)
    assert claims["pcrs"]["SHA256"]["pcr23"] == log.replay().hex()
    assert claims["AA.eventlog.github.com/cai.load_model"] == "sha256:abc"

    evidence["aa_eventlog"] = evidence["aa_eventlog"].replace("model-v1", "model-v2")
    with pytest.raises(VerificationError, match="does not replay"):
        verify_tpm(evidence, REPORT_DATA)


async def test_interrupted_extend_is_completed_on_next_event(swtpm, tmp_path):
    attester = attester_for(swtpm, tmp_path)
    await attester.extend_runtime_measurement(RuntimeEvent("d", "first", "1"))
    with open(tmp_path / "aael", "a") as log:  # appended, then "crashed" before the extend
        log.write("d second 2\n")
    await attester.extend_runtime_measurement(RuntimeEvent("d", "third", "3"))
    evidence = await attester.evidence(REPORT_DATA)
    claims = verify_tpm(evidence, REPORT_DATA)
    assert claims["AA.eventlog.d.second"] == "2" and claims["AA.eventlog.d.third"] == "3"


async def test_runtime_event_validation_and_register_choice(swtpm, tmp_path):
    attester = attester_for(swtpm, tmp_path)
    for content in ("a\nb", "two words"):  # one rule for every TEE: Trustee 1.5 splits lines on spaces
        with pytest.raises(EvidenceError, match="whitespace"):
            await attester.extend_runtime_measurement(RuntimeEvent("d", "op", content))
    with pytest.raises(EvidenceError, match="PCR 17 was requested"):
        await attester.extend_runtime_measurement(RuntimeEvent("d", "op", "c", register_index=17))
    disabled = attester_for(swtpm, tmp_path, aael_path=None)
    assert await disabled.extend_runtime_measurement(RuntimeEvent("d", "op", "c")) is MeasurementResult.NOT_ENABLED


async def test_firmware_event_log_is_included_when_present(swtpm, tmp_path):
    path = UPSTREAM / "go-eventlog" / "tpm" / "rhel8-uefi.bin"
    evidence = await attester_for(swtpm, tmp_path, eventlog_path=path).evidence(REPORT_DATA)
    assert base64.b64decode(evidence["eventlog"]) == path.read_bytes()
    assert verify_tpm(evidence, REPORT_DATA)["eventlog_present"] is True
    missing = await attester_for(swtpm, tmp_path, eventlog_path=tmp_path / "absent").evidence(REPORT_DATA)
    assert missing["eventlog"] is None


def _provision_ek_cert(tpm: SwtpmInstance) -> x509.Certificate:
    """Write a (self-signed, test-only) EK certificate to NV index 0x01c00002, as manufacturers do."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CAI test TPM CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "swtpm EK CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER) + bytes(7)  # NV certs are often zero-padded
    with ESAPI(tpm.tcti) as esapi:
        public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=0x01C00002, nameAlg=TPM2_ALG.SHA256, dataSize=len(der),
            attributes=TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA))
        index = esapi.nv_define_space(b"", public, auth_handle=ESYS_TR.OWNER)
        for offset in range(0, len(der), 512):
            esapi.nv_write(index, der[offset:offset + 512], offset, auth_handle=ESYS_TR.OWNER)
    return cert


async def test_ek_certificate_is_sent_when_provisioned(swtpm, tmp_path):
    cert = _provision_ek_cert(swtpm)
    evidence = await attester_for(swtpm, tmp_path).evidence(REPORT_DATA)
    assert x509.load_pem_x509_certificate(evidence["ek_cert"].encode()) == cert
    claims = verify_tpm(evidence, REPORT_DATA)
    assert claims["EK_cert_issuer"]["CN"] == "swtpm EK CA"


async def test_unreachable_tpm_is_a_clear_evidence_error(tmp_path):
    attester = TpmAttester(TpmAttesterConfig(tcti=f"device:{tmp_path}/no-such-tpm", eventlog_path=None))
    with pytest.raises(EvidenceError, match="no-such-tpm"):
        await attester.evidence(REPORT_DATA)


def test_bad_configuration_is_refused():
    with pytest.raises(EvidenceError, match="unknown PCR bank"):
        TpmAttesterConfig(banks=("MD5",))
    with pytest.raises(EvidenceError, match="persistent handle"):
        TpmAttesterConfig(ak_handle=0x80000001)
    with pytest.raises(EvidenceError, match="outside"):
        TpmAttesterConfig(pcrs=(0, 24))


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_kbs_client_with_tpm_evidence_end_to_end(swtpm, tmp_path, repository, secret, dialect):
    evidence = LocalEvidence(attester_for(swtpm, tmp_path))
    config = StandinConfig(dialect=dialect, repository=repository, allowed_tees=frozenset({"tpm"}))
    async with StandinServer(config) as trustee:
        async with KbsClient(KbsClientConfig(url=trustee.api_url, backoff=Backoff(0.01, 0.05, attempts=2)),
                             evidence, dialects=DialectMemory()) as client:
            assert await client.get_resource(MODEL_KEY) == secret
            assert (await client.attestation()).dialect is dialect


class _ReplayingTpm(TpmAttester):
    """Sends evidence bound to a stale challenge: the stand-in must refuse it."""

    async def evidence(self, report_data: bytes):
        return await super().evidence(hashlib.sha384(b"stale").digest())


async def test_kbs_rejects_tpm_evidence_for_another_challenge(swtpm, tmp_path, repository):
    evidence = LocalEvidence(_ReplayingTpm(TpmAttesterConfig(tcti=swtpm.tcti, eventlog_path=None, aael_path=None)))
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repository)) as trustee:
        async with KbsClient(KbsClientConfig(url=trustee.url, backoff=Backoff(0.01, 0.05, attempts=1)),
                             evidence, dialects=DialectMemory()) as client:
            with pytest.raises(KbsAttestationRejectedError):
                await client.get_resource(MODEL_KEY)


async def test_concurrent_runtime_events_keep_log_and_pcr_in_step(swtpm, tmp_path):
    attester = attester_for(swtpm, tmp_path)
    events = [RuntimeEvent("d", f"op{i}", str(i)) for i in range(6)]
    await asyncio.gather(*(attester.extend_runtime_measurement(event) for event in events))
    claims = verify_tpm(await attester.evidence(REPORT_DATA), REPORT_DATA)
    assert {claims[f"AA.eventlog.d.op{i}"] for i in range(6)} == {str(i) for i in range(6)}
