"""The fuzz-target table: every parser that reads outside input, with the errors it may raise.

One row per target: a callable that takes **bytes** (text parsers decode them the way their real
caller receives text), the tuple of "clean" exception types it is allowed to raise (our typed
errors, all carrying a message for the operator), and seed inputs: real upstream fixtures and
protocol vectors where they exist, otherwise values produced by our own encoders (which the unit
tests check against the real peers). Anything else escaping a target — ``IndexError``,
``KeyError``, ``TypeError``, ``struct.error``, ``UnicodeError``, ``RecursionError``,
``OverflowError``, ``MemoryError``, an ``AssertionError`` — is a crash, i.e. a bug to fix.

The same table drives the hypothesis tests (``test_fuzz_targets.py``), the corpus replay
(``test_fuzz_corpus.py``) and the optional atheris runner (``atheris_main.py``).
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from agents.config import load_cai_env
from agents.errors import CaiError, ConfigError
from agents.sections import load_section
from tests.conftest import KBS_VECTORS, REPO, UPSTREAM

# ---------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Target:
    """One fuzz target. ``seeds`` is evaluated lazily (some seeds are built with keys or tools)."""

    name: str
    run: Callable[[bytes], object]
    clean: tuple[type[BaseException], ...]
    seeds: Callable[[], Sequence[bytes]]
    json_seeds: bool = False  # seeds are JSON: add structure-aware mutations
    valid_seeds: bool = True  # every seed must be accepted (proves the harness reaches the parser)
    notes: str = ""
    tags: tuple[str, ...] = field(default=())


TARGETS: dict[str, Target] = {}


def target(name: str, clean: tuple[type[BaseException], ...], seeds: Callable[[], Sequence[bytes]], *,
           json_seeds: bool = False, valid_seeds: bool = True) -> Callable[[Callable[[bytes], object]],
                                                                          Callable[[bytes], object]]:
    def register(run: Callable[[bytes], object]) -> Callable[[bytes], object]:
        if name in TARGETS:
            raise ValueError(f"duplicate fuzz target {name}")
        TARGETS[name] = Target(name, run, clean, functools.cache(lambda: tuple(seeds())), json_seeds=json_seeds,
                               valid_seeds=valid_seeds, notes=(run.__doc__ or "").strip())
        return run
    return register


def text(data: bytes) -> str:
    """Bytes → str the way hostile text reaches us (env vars, file names, JSON strings): undecodable
    bytes become lone surrogates, which a careless ``.encode()`` turns into ``UnicodeEncodeError``."""
    return data.decode("utf-8", "surrogateescape")


class NotJson(Exception):
    """Raised by the harness (not the target) when input for a JSON-value parser is not JSON."""


def json_value(data: bytes) -> Any:
    """Decode the JSON value a caller hands to a value-level parser (harness side: always clean)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise NotJson from None


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _hex_file(path: Path) -> bytes:
    return bytes.fromhex(path.read_text().strip())


@functools.cache
def _workdir() -> Path:
    """Scratch directory for targets whose real entry point reads a file (config loaders)."""
    return Path(tempfile.mkdtemp(prefix="cai-fuzz-"))


def _as_file(data: bytes, name: str) -> Path:
    path = _workdir() / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------- TDX

from attestation_agent import eventlog  # noqa: E402
from attestation_agent.errors import EvidenceError  # noqa: E402
from attestation_agent.tdx import aael as tdx_aael  # noqa: E402
from attestation_agent.tdx import ccel  # noqa: E402
from attestation_agent.tdx.errors import EventLogError, TdxFormatError  # noqa: E402
from attestation_agent.tdx.quote import parse_quote  # noqa: E402
from attestation_agent.tdx.quote_verify import verify_quote  # noqa: E402

QUOTES = ("trustee/tdx/tdx_quote_4.dat", "trustee/tdx/tdx_quote_5.dat", "trustee/tdx/tdx_quote_6.dat",
          "go-tdx-guest/quote_v5_sample.dat", "go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
          "go-tdx-guest/ccel/cos-113-tdx-quote.dat", "trustee/az-tdx-vtpm/td-quote.bin")


@target("tdx_quote", (TdxFormatError,), lambda: [_read(UPSTREAM / q) for q in QUOTES])
def _tdx_quote(data: bytes) -> object:
    """TDX quote v4/v5 parse, then every offline check (signature, QE binding, PCK chain)."""
    quote = parse_quote(data)
    quote.header  # noqa: B018
    try:
        verify_quote(quote)
    except TdxFormatError:
        pass  # a parsed quote that does not verify is a clean outcome too
    return quote


@target("ccel_acpi_table", (EventLogError,), lambda: [_read(UPSTREAM / "go-tdx-guest/ccel/ccel_table.dat")])
def _ccel_table(data: bytes) -> object:
    """The 56-byte CCEL ACPI table."""
    return ccel.parse_acpi_table(data)


EVENT_LOGS = ("trustee/ccel/CCEL_data", "trustee/ccel/CCEL_data_ovmf", "trustee/ccel/CCEL_data_grub",
              "trustee/ccel/CCEL_AAEL_alibabacloud", "go-eventlog/ccel/CCEL_unpadded.data.bin",
              "go-tdx-guest/ccel/ccel_data.dat", "go-eventlog/tpm/ubuntu-2104-no-secure-boot.bin")


def _trimmed_logs() -> list[bytes]:
    # Trailing 0xFF padding (up to 64 KiB) only slows the mutator down; keep the records.
    return [ccel.trim(_read(UPSTREAM / name)) for name in EVENT_LOGS]


@target("tcg2_event_log", (EventLogError,), _trimmed_logs)
def _tcg2_log(data: bytes) -> object:
    """TCG2 crypto-agile event log (CCEL or TPM), RTMR replay and the AAEL events inside it."""
    log = ccel.parse_event_log(data)
    ccel.replay(log.events)
    ccel.replay_rtmrs(log.events)
    tdx_aael.tcg2_events(log.events)
    return log


AAEL_TEXT = ("openanolis-trustee-v1.5.2/aael/AAEL_data_1", "openanolis-trustee-v1.5.2/aael/AAEL_data_2",
             "openanolis-trustee-v1.5.2/aael/AAEL_data_3")


TPM_AAEL = ("INIT sha256/0000000000000000000000000000000000000000000000000000000000000000\n"
            "github.com/confidential-containers/guest-components/attestation-agent create_container "
            "{\"image\":\"busybox\"}\n")


@target("aael_text", (EvidenceError,), lambda: [*(_read(UPSTREAM / n) for n in AAEL_TEXT), TPM_AAEL.encode()])
def _aael_text(data: bytes) -> object:
    """The text AA event log (TDX SHA-384 and vTPM SHA-256 flavours), as bytes and as text, replayed
    and turned into claims."""
    eventlog.parse_text(text(data))
    log = eventlog.parse_text(data)
    log.replay()
    log.to_claims()
    return log


@target("aael_tcg2", (EventLogError,), lambda: [_read(UPSTREAM / "trustiflux/v1.5.2/aael/aael-tcg2.bin")])
def _aael_tcg2(data: bytes) -> object:
    """Headerless TCG2 AAEL records (Trustiflux)."""
    return tdx_aael.tcg2_events(tdx_aael.parse_tcg2_records(data))


# ---------------------------------------------------------------------------------------------- TPM

from attestation_agent.tpm.attest import parse_attest  # noqa: E402
from attestation_agent.tpm.errors import TpmFormatError  # noqa: E402
from attestation_agent.tpm.evidence import decode_evidence  # noqa: E402

TPM_EVIDENCE = UPSTREAM / "trustee" / "tpm" / "tpm_evidence.json"


@target("tpm_attest", (TpmFormatError,),
        lambda: [base64.b64decode(json.loads(_read(TPM_EVIDENCE))["tpm_quote"]["message"])])
def _tpm_attest(data: bytes) -> object:
    """TPMS_ATTEST quote body."""
    return parse_attest(data)


def _tpm_evidence_seeds() -> list[bytes]:
    from tests.unit.test_tpm_formats import as_openanolis
    upstream = json.loads(_read(TPM_EVIDENCE))
    return [json.dumps(as_openanolis(upstream)).encode()]


@target("tpm_evidence_json", (TpmFormatError,), _tpm_evidence_seeds, json_seeds=True)
def _tpm_evidence(data: bytes) -> object:
    """Trustee 1.5 TPM evidence JSON (ak_pubkey, quotes, event log)."""
    return decode_evidence(json_value(data))


# ---------------------------------------------------------------------------------------------- NVIDIA

from attestation_agent.nvidia import spdm  # noqa: E402
from attestation_agent.nvidia.chain import fwid_from_cert, load_cert_chain, verify_chain  # noqa: E402
from attestation_agent.nvidia.errors import GpuEvidenceError  # noqa: E402
from attestation_agent.nvidia.evidence import (  # noqa: E402
    DeviceEvidence,
    additional_evidence,
    embedded_evidence,
    parse_additional_evidence,
    parse_embedded_evidence,
)

NV_SDK = UPSTREAM / "nv-attestation-sdk"
GPU_REPORTS = (UPSTREAM / "trustee/nvidia/hopperAttestationReport.txt",
               UPSTREAM / "trustee/nvidia/hopper_coco_report1.txt",
               NV_SDK / "unit-testdata/sample_attestation_data/gpu/blackwellAttestationReport.txt",
               NV_SDK / "unit-testdata/sample_attestation_data/switch/switchAttestationReport.txt")
GPU_CHAINS = (UPSTREAM / "nvtrust/samples/hopperCertChain.txt",
              UPSTREAM / "trustee/nvidia/hopper_cert_chain_case1.txt",
              NV_SDK / "unit-testdata/sample_attestation_data/gpu/blackwellCertChain.txt")


@target("spdm_report", (GpuEvidenceError,), lambda: [_hex_file(p) for p in GPU_REPORTS])
def _spdm_report(data: bytes) -> object:
    """NVML attestation report: SPDM GET_MEASUREMENTS request ‖ response, opaque data, to SDK JSON."""
    report = spdm.parse_report(data)
    spdm.to_nvidia_sdk_json(report)
    return report


@target("spdm_request", (GpuEvidenceError,), lambda: [_hex_file(p)[:spdm.REQUEST_SIZE] for p in GPU_REPORTS])
def _spdm_request(data: bytes) -> object:
    """SPDM GET_MEASUREMENTS request alone."""
    return spdm.request_to_nvidia_sdk_json(spdm.parse_request(data))


def _opaque_seeds() -> list[bytes]:
    out = []
    for path in GPU_REPORTS[:2]:
        report = spdm.parse_report(_hex_file(path))
        out.append(b"".join(struct.pack("<HH", f.type, len(f.data)) + f.data for f in report.response.opaque.fields))
    return out


@target("nvidia_opaque_data", (GpuEvidenceError,), _opaque_seeds)
def _nvidia_opaque(data: bytes) -> object:
    """NVIDIA's opaque-data TLV list inside the SPDM response."""
    return spdm.parse_opaque(data)


@functools.cache
def _nvidia_roots() -> tuple[Any, ...]:
    return load_cert_chain(_read(UPSTREAM / "trustee/nvidia/nvidia_device_root.pem"))


@target("nvidia_cert_chain", (GpuEvidenceError,), lambda: [_read(p) for p in GPU_CHAINS])
def _nvidia_chain(data: bytes) -> object:
    """GPU certificate chain (PEM, DER or base64 of either), FWID and chain validation."""
    certs = load_cert_chain(data)
    fwid_from_cert(certs[0])
    try:
        verify_chain(certs, _nvidia_roots(), now=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC))
    except GpuEvidenceError:
        pass
    return certs


def _nvidia_evidence_seeds() -> list[bytes]:
    device = DeviceEvidence("HOPPER", "GPU-0", _hex_file(GPU_REPORTS[0]), _read(GPU_CHAINS[0]), 0, "H100",
                            "550.144.03", "96.00.5E.00.01", True)
    when = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    return [json.dumps(additional_evidence([device])).encode(), json.dumps(embedded_evidence([device], when)).encode()]


@target("nvidia_evidence_json", (GpuEvidenceError,), _nvidia_evidence_seeds, json_seeds=True)
def _nvidia_evidence(data: bytes) -> object:
    """The ``nvidia`` additional evidence (0.4.0) and Trustee 1.5's embedded ``gpu_evidence``."""
    value = json_value(data)
    if isinstance(value, dict) and "evidence_list" in value:
        return parse_embedded_evidence(value)
    return parse_additional_evidence(value)


# ---------------------------------------------------------------------------------------------- KBS

from attestation_agent.errors import JweError, ProtocolError  # noqa: E402
from attestation_agent.kbs import cookies, jwe, messages  # noqa: E402
from attestation_agent.kbs import token as kbs_token  # noqa: E402
from attestation_agent.kbs.dialect import Dialect, expected_version  # noqa: E402
from attestation_agent.kbs.resource import ResourcePath  # noqa: E402
from attestation_agent.kbs.tee_key import KeyAlgorithm, TeeKey, public_key_from_jwk  # noqa: E402


def _rcar(part: str) -> list[bytes]:
    out = []
    for version in ("0.1.0", "0.4.0"):
        value = json.loads(_read(KBS_VECTORS / f"rcar-sample-v{version}.json")).get(part)
        if value is not None:
            out.append(json.dumps(value).encode())
    return out


@target("kbs_challenge", (ProtocolError,), lambda: _rcar("challenge"), json_seeds=True)
def _kbs_challenge(data: bytes) -> object:
    """``POST /auth`` answer."""
    return messages.parse_challenge(data)


@target("kbs_attest_response", (ProtocolError,), lambda: [b'{"token":"eyJhbGciOiJSUzM4NCJ9.e30.c2ln"}'],
        json_seeds=True)
def _kbs_attest_response(data: bytes) -> object:
    """``POST /attest`` answer (the token)."""
    return messages.parse_attest_response(data)


@target("kbs_error_body", (), lambda: [json.dumps(messages.error_body(
    "https://github.com/confidential-containers/kbs/errors/PolicyDeny", "Policy denied")).encode(),
    b'{"type":"x/AttestationFailed","detail":"KBS Client Protocol Version Mismatch: expect =0.4.0"}'],
    json_seeds=True)
def _kbs_error(data: bytes) -> object:
    """KBS error bodies (RFC 7807-ish); must never raise, only say "no error info"."""
    info = messages.parse_error(data)
    if info is not None:
        expected_version(info.detail)
    return info


@target("kbs_auth_request", (ProtocolError,), lambda: _rcar("auth_request"), json_seeds=True)
def _kbs_auth_request(data: bytes) -> object:
    """``POST /auth`` request as the stand-in (a KBS) parses it, in either dialect."""
    return _any_dialect(messages.parse_auth_request, data)


def _any_dialect(parse: Callable[[bytes, Dialect], object], data: bytes) -> object:
    """Parse as each dialect's server would; succeed if one accepts (each seed is one dialect's)."""
    error: ProtocolError | None = None
    for dialect in Dialect:
        try:
            return parse(data, dialect)
        except ProtocolError as exc:
            error = exc
    assert error is not None
    raise error


@target("kbs_attest_request", (ProtocolError,), lambda: _rcar("attest_request"), json_seeds=True)
def _kbs_attest_request(data: bytes) -> object:
    """``POST /attest`` request as a KBS parses it, in either dialect."""
    return _any_dialect(messages.parse_attest_request, data)


@target("kbs_token", (ProtocolError,), lambda: [
    b"eyJhbGciOiJSUzM4NCIsInR5cCI6IkpXVCJ9.eyJleHAiOjE4MDAwMDAwMDAsInRlZSI6InNhbXBsZSJ9.c2ln"])
def _kbs_token(data: bytes) -> object:
    """Unverified claims and expiry of a KBS token (the client only reads ``exp``)."""
    token = text(data)
    return kbs_token.unverified_claims(token), kbs_token.expiry(token)


@target("kbs_cookies", (), lambda: [b"kbs-session-id=0123456789abcdef0123456789abcdef; Expires=Mon, 23 Nov 2026 "
                                    b"12:00:00 GMT\nother=1; Path=/"])
def _kbs_cookies(data: bytes) -> object:
    """``Set-Cookie`` lines and a ``Cookie`` header; the session id must be safe to send back."""
    lines = text(data).split("\n")
    sid = cookies.session_id_from_set_cookie(lines)
    if sid is not None:
        cookies.cookie_header(sid)
    cookies.session_id_from_cookie_header(lines[0])
    return sid


@target("kbs_resource_path", (ValueError,), lambda: [b"default/aliyun/model-decryption-key", b"a/b/c"])
def _kbs_resource_path(data: bytes) -> object:
    """``<repository>/<type>/<tag>`` (no traversal) and the dialect names."""
    value = text(data)
    path = ResourcePath.parse(value)
    str(path)
    return path


@target("kbs_dialect", (ValueError,), lambda: [b"0.1.0", b"0.4.0"])
def _kbs_dialect(data: bytes) -> object:
    value = text(data)
    expected_version(value)
    return Dialect.parse(value)


@target("tee_pubkey_jwk", (ValueError,), lambda: [json.dumps(json.loads(_read(
    KBS_VECTORS / f"runtime-data-v{v}.json"))["tee-pubkey"]).encode() for v in ("0.1.0", "0.4.0")], json_seeds=True)
def _tee_pubkey(data: bytes) -> object:
    """The TEE public key JWK a KBS reads from the attest request."""
    return public_key_from_jwk(json_value(data))


@functools.cache
def _tee_keys() -> tuple[TeeKey, ...]:
    rsa_key = load_pem_private_key(_read(KBS_VECTORS / "tee_rsa2048_private_pkcs8.pem"), None)
    ec_key = load_pem_private_key(_read(KBS_VECTORS / "tee_p256_private_pkcs8.pem"), None)
    return (TeeKey(KeyAlgorithm.RSA1_5, rsa_key), TeeKey(KeyAlgorithm.RSA_OAEP_256, rsa_key),  # type: ignore[arg-type]
            TeeKey(KeyAlgorithm.ECDH_ES_A256KW, ec_key))  # type: ignore[arg-type]


JWE_VECTORS = ("jwe-trustee-1.5-rsa1_5.json", "jwe-v0.4.0-rsa-oaep-256.json", "jwe-v0.4.0-ecdh-es-a256kw-p256.json")


@target("kbs_jwe", (JweError,), lambda: [_read(KBS_VECTORS / n) for n in JWE_VECTORS], json_seeds=True)
def _kbs_jwe(data: bytes) -> object:
    """``GET /resource`` answer: Trustee 1.5's raw JWE and RFC 7516 flattened JSON, decrypted with the
    vectors' keys (each seed decrypts with one of them)."""
    plain = None
    for key in _tee_keys():
        try:
            plain = jwe.decrypt_resource(data, key)
        except JweError:
            continue
    if plain is None:
        raise JweError("no key decrypts this JWE")
    return plain


# ---------------------------------------------------------------------------------------------- gateway tokens

from gateway.errors import CertFormatError, GatewayConfigError, VerificationFailed  # noqa: E402
from gateway.token_verify import load_anchors, verify_token  # noqa: E402

TOKEN_NOW = 1_800_000_000.0
TOKEN_RUNTIME = {"pubkey-hash": "ggFYIAAA"}


@functools.cache
def _token_ca() -> Any:
    from trustee_standin.ca import load_or_create
    return load_or_create(_workdir() / "ca")


def _token_seeds() -> list[bytes]:
    from trustee_standin.tokens import TokenService
    ca = _token_ca()
    service = TokenService(ca.signers, duration_s=300.0, leeway_s=0, clock=lambda: TOKEN_NOW,
                           policies={"default": "package policy"})
    return [service.issue(tee_claims=[("sample", {"svn": "1"})], runtime_data=TOKEN_RUNTIME, init_data=None,
                          policy_ids=["default"], alg=alg).encode() for alg in ("RS384", "ES256")]


@target("as_token_verify", (VerificationFailed,), _token_seeds)
def _as_token(data: bytes) -> object:
    """Attestation-service JWT/JWS: header jwk + x5c chain to the anchor, signature, exp/nbf, policy and
    runtime-data binding (gateway ingress)."""
    anchors = load_anchors(_token_ca().root_cert_path.read_bytes())
    return verify_token(text(data), anchors=anchors, policy_ids=["default"], expected_runtime_data=TOKEN_RUNTIME,
                        now=TOKEN_NOW + 10)


# ---------------------------------------------------------------------------------------------- data hub

from data_hub import sealed  # noqa: E402
from data_hub.errors import ResourceUriError, SealedSecretError  # noqa: E402
from data_hub.uri import check_file_name, parse_kbs_uri  # noqa: E402

SEALED_FIXTURES = UPSTREAM / "trustiflux" / "v1.3.1" / "sealed-secret"


@functools.cache
def _sealing_key() -> Any:
    from jwcrypto import jwk
    return jwk.JWK.generate(kty="EC", crv="P-256")


def _sealed_seeds() -> list[bytes]:
    from attestation_agent.kbs.encoding import b64url_encode
    vault = _read(SEALED_FIXTURES / "vault-2.json")
    envelope = sealed.parse_payload(_read(SEALED_FIXTURES / "envelope-1.json"))
    return [sealed.seal(sealed.parse_payload(vault), _sealing_key(), "fuzz-key").encode(),
            sealed.seal(envelope, _sealing_key(), "fuzz-key").encode(),
            f"sealed.fakejwsheader.{b64url_encode(vault)}.fakesignature".encode()]


@target("sealed_secret", (SealedSecretError,), _sealed_seeds)
def _sealed(data: bytes) -> object:
    """``POST /cdh/unseal`` body: ``sealed.<jws header>.<payload>.<signature>``, ES256 verification."""
    parsed = sealed.parse_sealed(data)
    try:
        sealed.verify(parsed, _sealing_key())
    except SealedSecretError:
        pass
    return parsed


@target("sealed_payload", (SealedSecretError,), lambda: [_read(p) for p in sorted(SEALED_FIXTURES.glob("*.json"))],
        json_seeds=True)
def _sealed_payload(data: bytes) -> object:
    """The sealed secret's JSON payload (vault / envelope) and the envelope unwrap."""
    secret = sealed.parse_payload(data)
    if isinstance(secret, sealed.EnvelopeSecret):
        try:
            sealed.envelope_decrypt(secret, bytes(32))
        except SealedSecretError:
            pass
    return secret


@target("kbs_uri", (ResourceUriError,), lambda: [b"kbs:///default/aliyun/model-decryption-key",
                                                 b"kbs://trustee.example:8080/default/aliyun/crag-master-key"])
def _kbs_uri(data: bytes) -> object:
    """``kbs:///repo/type/tag`` and ``kbs://host:port/...`` resource URIs (config, API, sealed vault names)."""
    return parse_kbs_uri(text(data))


@target("resource_file_name", (ResourceUriError,), lambda: [b"model-key", b"alt-key"])
def _file_name(data: bytes) -> object:
    """A file name under ``/run/cai/resources`` from config."""
    return check_file_name(text(data))


# ---------------------------------------------------------------------------------------------- cachefs

from cachefs.cache import ChunkLayout, ChunkRecord, decode_record, encode_record  # noqa: E402
from cachefs.errors import CachefsError  # noqa: E402
from cachefs.gocryptfs import config as gcfg  # noqa: E402
from cachefs.gocryptfs import content, names, symlink  # noqa: E402
from cachefs.gocryptfs.keys import derive_keys  # noqa: E402
from cachefs.manifest import ManifestEntry, build_manifest, manifest_digest, parse_manifest  # noqa: E402

GOCRYPTFS_PASSWORD = b"fuzz-password"
MASTER_KEY = bytes(range(32))
FILE_ID = bytes(range(1, 17))
MAX_FUZZ_SCRYPT_N = 1 << 12  # a mutated N would otherwise cost seconds of scrypt per example


@functools.cache
def _volume() -> tuple[gcfg.VolumeConfig, content.ContentCipher, names.NameCodec]:
    config = gcfg.parse_config(gcfg.build_config(MASTER_KEY, GOCRYPTFS_PASSWORD, scrypt_n=1 << 10, salt=bytes(32)))
    keys = derive_keys(MASTER_KEY)
    return config, content.ContentCipher(keys.content), names.NameCodec(config, keys.names)


def _real_gocryptfs_conf() -> list[bytes]:
    """A gocryptfs.conf written by the real gocryptfs binary (the format oracle)."""
    from cachefs.testing import gocryptfs_init
    work = Path(tempfile.mkdtemp(prefix="fuzz-gocryptfs-", dir=_workdir()))
    (work / "pass").write_bytes(GOCRYPTFS_PASSWORD + b"\n")
    gocryptfs_init(work / "cipher", work / "pass", scryptn=10)
    return [(work / "cipher" / "gocryptfs.conf").read_bytes()]


@target("gocryptfs_conf", (CachefsError,), lambda: [
    *_real_gocryptfs_conf(), gcfg.build_config(MASTER_KEY, GOCRYPTFS_PASSWORD, scrypt_n=1 << 10, salt=bytes(32))],
    json_seeds=True)
def _gocryptfs_conf(data: bytes) -> object:
    """gocryptfs.conf parse, then unlock with the password (scrypt N capped for the fuzzer)."""
    config = gcfg.parse_config(data)
    if config.scrypt.n <= MAX_FUZZ_SCRYPT_N:
        derive_keys(gcfg.unlock(config, GOCRYPTFS_PASSWORD))
    return config


def _file_seeds() -> list[bytes]:
    _, cipher, _ = _volume()
    return [cipher.encrypt_file(b"hello gocryptfs\n", FILE_ID), cipher.encrypt_file(bytes(range(256)) * 20, FILE_ID)]


@target("gocryptfs_file", (CachefsError,), _file_seeds)
def _gocryptfs_file(data: bytes) -> object:
    """A whole ciphertext file: 18-byte header, then AES-GCM blocks (holes refused in strict mode)."""
    _, cipher, _ = _volume()
    content.plain_size(len(data))
    file_id = content.parse_header(data[:content.HEADER_LEN])
    return cipher.decrypt_blocks(data[content.HEADER_LEN:], 0, file_id, strict=True)


@target("gocryptfs_block", (CachefsError,), lambda: [_file_seeds()[0][content.HEADER_LEN:]])
def _gocryptfs_block(data: bytes) -> object:
    """One content block by itself (the reader's single-block path)."""
    _, cipher, _ = _volume()
    return cipher.decrypt_single(data, 0, FILE_ID, "fuzz")


def _name_seeds() -> list[bytes]:
    _, _, codec = _volume()
    return [codec.encrypt(name, bytes(16)).stored.encode() for name in (b"model.safetensors", b"config.json")]


@target("gocryptfs_name", (CachefsError, ValueError), _name_seeds)
def _gocryptfs_name(data: bytes) -> object:
    """EME-encrypted, raw-base64 directory entry names (as ``os.listdir`` hands them over)."""
    _, _, codec = _volume()
    return codec.decrypt(text(data), bytes(16))


def _longname_seeds() -> list[bytes]:
    _, _, codec = _volume()
    name = codec.encrypt(b"L" * 200, bytes(16))
    assert name.longname_content is not None
    return [name.stored.encode() + b"\0" + name.longname_content]


@target("gocryptfs_longname", (CachefsError, ValueError), _longname_seeds)
def _gocryptfs_longname(data: bytes) -> object:
    """``gocryptfs.longname.<hash>`` + its ``.name`` file content (NUL-separated here), then decrypt."""
    _, _, codec = _volume()
    stored, _, body = data.partition(b"\0")
    encoded = names.parse_longname_file(text(stored), body)
    return codec.decrypt(encoded, bytes(16))


@target("gocryptfs_diriv", (CachefsError, ValueError), lambda: [bytes(range(16))])
def _gocryptfs_diriv(data: bytes) -> object:
    """``gocryptfs.diriv`` file content."""
    return names.parse_diriv(data, "fuzz")


@target("gocryptfs_symlink", (CachefsError, ValueError), lambda: [
    symlink.encrypt_target(_volume()[1], b"a/b/c/deep.txt").encode()])
def _gocryptfs_symlink(data: bytes) -> object:
    """Encrypted symlink target (base64 of one AES-GCM block)."""
    return symlink.decrypt_target(_volume()[1], text(data))


def _record_seeds() -> list[bytes]:
    return [encode_record(ChunkRecord(path="model/weights.bin", size=9 * 1024 * 1024, etag='"abc"',
                                      layout=ChunkLayout(blocks_per_chunk=256), present=present))
            for present in (frozenset(), frozenset({0, 1, 2, 5, 7}))]


@target("cache_record", (CaiError,), _record_seeds, json_seeds=True)
def _cache_record(data: bytes) -> object:
    """The ciphertext cache's per-object chunk record (which chunks are on disk)."""
    return decode_record(data)


def _manifest_seeds() -> list[bytes]:
    return [build_manifest({"model/weights.bin": ManifestEntry(8192, FILE_ID.hex(), "ab" * 32),
                            "empty": ManifestEntry(0, "", hashlib.sha256(b"").hexdigest())})]


@target("manifest", (CachefsError,), _manifest_seeds, json_seeds=True)
def _manifest(data: bytes) -> object:
    """The encryptor's manifest, unchecked and checked against its own digest."""
    parse_manifest(data, manifest_digest(data))
    return parse_manifest(data, None)


# ---------------------------------------------------------------------------------------------- OHTTP / BHTTP / HTTP

from gateway import bhttp, ohttp  # noqa: E402
from gateway.http_head import ProxyRequestError, parse_origin_request, parse_proxy_request  # noqa: E402

OHTTP_KEY = x25519.X25519PrivateKey.from_private_bytes(bytes(range(32)))
OHTTP_CONFIG = ohttp.KeyConfig(7, OHTTP_KEY.public_key().public_bytes_raw(),
                               ((ohttp.KDF_HKDF_SHA256, 1), (ohttp.KDF_HKDF_SHA256, 3)))
BHTTP_REQUEST = bhttp.Request("POST", "https", "model.example", "/v1/completions",
                              headers=[("content-type", "application/json")], body=b'{"prompt":"hi"}')


@target("ohttp_key_config", (ohttp.OhttpError,), lambda: [ohttp.encode_key_config_list([OHTTP_CONFIG])])
def _ohttp_keys(data: bytes) -> object:
    """``application/ohttp-keys`` key configuration list."""
    return ohttp.decode_key_config_list(data)


@functools.cache
def _ohttp_exchange() -> tuple[ohttp.ClientRequest, bytes, bytes]:
    client = ohttp.ClientRequest(OHTTP_CONFIG)
    body = bhttp.encode_request(BHTTP_REQUEST)
    request = client.header() + client.chunk(body[:10]) + client.chunk(body[10:]) + client.final(b"")
    server = ohttp.RequestDecoder({OHTTP_CONFIG.key_id: OHTTP_KEY})
    server.feed(request)
    server.finish()
    encoder = ohttp.ResponseEncoder(server)
    head = bhttp.response_head(200, [("content-type", "text/plain")])
    response = encoder.start() + encoder.chunk(head) + encoder.chunk(bhttp.response_chunk(b"hello")) + \
        encoder.final(bhttp.response_end())
    return client, request, response


@target("ohttp_request", (ohttp.OhttpError,), lambda: [_ohttp_exchange()[1]])
def _ohttp_request(data: bytes) -> object:
    """Chunked OHTTP request (header, HPKE enc, varint-framed chunks), fed in two pieces."""
    decoder = ohttp.RequestDecoder({OHTTP_CONFIG.key_id: OHTTP_KEY})
    cut = len(data) // 3
    out = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
    out.append(decoder.finish())
    return out


@target("ohttp_response", (ohttp.OhttpError,), lambda: [_ohttp_exchange()[2]])
def _ohttp_response(data: bytes) -> object:
    """Chunked OHTTP response as our ingress decodes it."""
    decoder = ohttp.ResponseDecoder(_ohttp_exchange()[0])
    cut = len(data) // 2
    out = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
    out.append(decoder.finish())
    return out


@target("ohttp_metadata", (ohttp.OhttpError,), lambda: [ohttp.encode_metadata(bytes(32))])
def _ohttp_metadata(data: bytes) -> object:
    """``/tng/tunnel`` protobuf metadata."""
    return ohttp.decode_metadata(data)


@target("bhttp_request", (bhttp.BhttpError,), lambda: [bhttp.encode_request(BHTTP_REQUEST),
                                                       bhttp.encode_request(BHTTP_REQUEST, known_length=False)])
def _bhttp_request(data: bytes) -> object:
    """Binary HTTP request (known and indeterminate length)."""
    return bhttp.decode_request(data)


@target("bhttp_response", (bhttp.BhttpError,), lambda: [
    bhttp.response_head(200, [("content-type", "text/plain")]) + bhttp.response_chunk(b"hello") + bhttp.response_end()])
def _bhttp_response(data: bytes) -> object:
    """Binary HTTP response."""
    return bhttp.decode_response(data)


@target("http_proxy_head", (ProxyRequestError,), lambda: [
    b"CONNECT model.example:443 HTTP/1.1\r\nHost: model.example:443\r\n\r\n",
    b"GET http://model.example/v1/models HTTP/1.1\r\nHost: model.example\r\nUser-Agent: x\r\n\r\n"])
def _http_proxy_head(data: bytes) -> object:
    """HTTP proxy request head (CONNECT and absolute-form) at the ingress."""
    return parse_proxy_request(data)


@target("http_origin_head", (ProxyRequestError,), lambda: [
    b"POST /v1/completions HTTP/1.1\r\nHost: model\r\nContent-Length: 2\r\n\r\n"])
def _http_origin_head(data: bytes) -> object:
    """Origin-form request head (egress HTTP inspection)."""
    return parse_origin_request(data)


# ---------------------------------------------------------------------------------------------- RA-TLS

from gateway import ratls_cert, ratls_format_a  # noqa: E402

RATLS_KEY = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())


def _ratls_record(claims_buffer: bytes) -> ratls_cert.EvidenceRecord:
    spki = ratls_cert.spki_der(RATLS_KEY.public_key())
    runtime = (ratls_format_a.runtime_data_text(claims_buffer) if claims_buffer
               else ratls_cert.runtime_data_text(ratls_cert.binding_claims(spki)))
    return ratls_cert.EvidenceRecord(tee_type="sample", aa_evidence=b'{"svn":"1","report_data":"AA=="}',
                                     aa_runtime_data=runtime)


def _ratls_certs() -> list[bytes]:
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    buffer = ratls_format_a.claims_buffer(ratls_cert.spki_der(RATLS_KEY.public_key()))
    return [ratls_cert.build_certificate(RATLS_KEY, _ratls_record(b""), now),
            ratls_cert.build_certificate(RATLS_KEY, _ratls_record(buffer), now, claims_buffer=buffer)]


@target("ratls_certificate", (CertFormatError,), _ratls_certs)
def _ratls_certificate(data: bytes) -> object:
    """A peer's rats-tls certificate: DER, self-signature, evidence extension, key binding (A or B)."""
    cert = ratls_cert.parse_certificate(data)
    if cert.claims_buffer:
        return ratls_format_a.check_binding(cert)
    return ratls_cert.check_binding(cert)


def _extension_seeds() -> list[bytes]:
    buffer = ratls_format_a.claims_buffer(ratls_cert.spki_der(RATLS_KEY.public_key()))
    return [ratls_cert.encode_extension(_ratls_record(b"")), ratls_cert.encode_extension(_ratls_record(buffer), buffer)]


@target("ratls_evidence_extension", (CertFormatError,), _extension_seeds)
def _ratls_extension(data: bytes) -> object:
    """Extension 2.23.133.5.4.9 (CBOR tag, evidence map, claims buffer) and its runtime data."""
    record, buffer = ratls_cert.decode_extension_parts(data)
    record.runtime_data_object()
    if buffer:
        ratls_format_a.expected_runtime_data(buffer)
        ratls_format_a.check_pubkey_hash(buffer, ratls_cert.spki_der(RATLS_KEY.public_key()))
    return record


# ---------------------------------------------------------------------------------------------- configuration

from agents.envfile import parse_env_text  # noqa: E402
from agents.inject import InjectError, inject_documents, load_documents, parse_cai_options  # noqa: E402
from attestation_agent.config import AA_SETTINGS  # noqa: E402
from cachefs.daemon import CACHEFS_SETTINGS  # noqa: E402
from data_hub.config import load_hub_config  # noqa: E402
from gateway.config import parse_config_json, parse_secure_ports  # noqa: E402


def _tng_seeds() -> list[bytes]:
    from tests.unit.test_gateway_config import DOCS_EGRESS, GUIDE_INGRESS
    return [json.dumps(GUIDE_INGRESS).encode(), json.dumps(DOCS_EGRESS).encode()]


@target("tng_config", (GatewayConfigError,), _tng_seeds, json_seeds=True)
def _tng_config(data: bytes) -> object:
    """TNG JSON configuration (``add_ingress``/``add_egress``/...)."""
    return parse_config_json(data)


CAI_OPTIONS = (b'{"cipher-text-volume": "model-pvc", "model-decryption-key-id": '
               b'"kbs:///default/aliyun/model-decryption-key", "trustee-address": "http://10.0.0.1:8081/api", '
               b'"tdx-ra-enable": true, "gpu-ra-enable": false, "tng-http-secure-ports": [{"port": 8080}]}')


@target("cai_options", (ConfigError,), lambda: [CAI_OPTIONS], json_seeds=True)
def _cai_options(data: bytes) -> object:
    """The ``caiOptions`` annotation (``cai inject`` and the gateway's secure ports)."""
    value = text(data)
    try:
        parse_secure_ports(value)
    except GatewayConfigError:
        pass
    return parse_cai_options(value)


@target("inject_manifest", (InjectError,), lambda: [_read(REPO / "compose/k8s/vllm-deployment.yaml")])
def _inject_manifest(data: bytes) -> object:
    """``cai inject``: a Kubernetes manifest (YAML or JSON) with the caiOptions annotation."""
    docs, _ = load_documents(text(data))
    return inject_documents(docs)


@target("cai_env_text", (ConfigError,), lambda: [_read(REPO / "compose/cai.env.example")])
def _cai_env_text(data: bytes) -> object:
    """cai.env text as ``KEY=VALUE`` lines (quotes, comments, export)."""
    return parse_env_text(text(data), source="cai.env")


@target("cai_env_file", (ConfigError,), lambda: [_read(REPO / "compose/cai.env.example")])
def _cai_env_file(data: bytes) -> object:
    """cai.env read from a file and validated (every documented variable)."""
    return load_cai_env(environ={}, env_file=_as_file(data, "cai.env"))


def _toml_seeds() -> list[bytes]:
    seeds = [_read(p) for p in sorted((UPSTREAM / "trustiflux").rglob("*.toml"))[:2]]
    seeds.append(b'[aa]\nsocket = "/run/cai/aa.sock"\nkbs_url = "http://127.0.0.1:8080"\n'
                 b'[cdh]\nsocket = "/run/cai/cdh.sock"\n[[cdh.resources]]\nuri = "kbs:///a/b/c"\nfile = "model-key"\n'
                 b'trustee_url = "http://127.0.0.1:8080"\n'
                 b'[cachefs]\nmount_point = "/tmp/model"\n')
    return seeds


def _load_sections(path: Path) -> object:
    load_section("aa", AA_SETTINGS, config_file=path, environ={})
    load_section("cachefs", CACHEFS_SETTINGS, config_file=path, environ={}, tables=())
    return load_hub_config(config_file=path, environ={})


@target("settings_toml", (ConfigError,), _toml_seeds)
def _settings_toml(data: bytes) -> object:
    """``/etc/cai/cai.toml``: the [aa], [cdh] (+ [[cdh.resources]]) and [cachefs] sections."""
    return _load_sections(_as_file(data, "cai.toml"))


@target("settings_json", (ConfigError,), lambda: [json.dumps({
    "aa": {"kbs_url": "http://127.0.0.1:8080"},
    "cdh": {"resources": [{"uri": "kbs:///a/b/c", "file": "model-key", "trustee_url": "http://127.0.0.1:8080"}]},
    "cachefs": {}}).encode()], json_seeds=True)
def _settings_json(data: bytes) -> object:
    """The same settings from a ``.json`` config file."""
    return _load_sections(_as_file(data, "cai.json"))


# ---------------------------------------------------------------------------------------------- Trustee stand-in


@target("standin_fault_json", (ValueError,), lambda: [b'{"route": "attest", "mode": "status", "count": 2, '
                                                      b'"status": 503}', b'{"route": "resource", "mode": "hang", '
                                                      b'"seconds": 1.5}'], json_seeds=True)
def _standin_fault(data: bytes) -> object:
    """``POST /control/faults`` body of the Trustee stand-in (test infrastructure, still network-facing)."""
    from trustee_standin.faults import Fault
    return Fault.from_json(json_value(data))


# ---------------------------------------------------------------------------------------------- helpers for tests

HARNESS_CLEAN = (NotJson,)
FORBIDDEN = (IndexError, KeyError, TypeError, struct.error, UnicodeError, RecursionError, OverflowError,
             MemoryError, AssertionError, AttributeError, ZeroDivisionError)


def check(name: str, data: bytes) -> BaseException | None:
    """Run target ``name`` on ``data``. Returns the clean exception (or None on success); re-raises
    anything else, which is a crash."""
    tgt = TARGETS[name]
    try:
        tgt.run(data)
    except HARNESS_CLEAN as exc:
        return exc
    except tgt.clean as exc:
        if isinstance(exc, FORBIDDEN) and not isinstance(exc, CaiError):
            raise  # e.g. UnicodeDecodeError is a ValueError: a leak, not a clean error
        return exc
    return None
