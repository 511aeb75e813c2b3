"""Cryptographic parameters as SECURITY.md and docs/gateway.md state them, checked on live endpoints.

- rats-tls: a real in-process egress (our AA with the sample TEE, a plaintext backend) refuses a
  TLS 1.2 client before any byte reaches the backend, negotiates TLS 1.3 with ALPN ``rats-tls`` and
  presents a self-signed P-256 / ECDSA-SHA256 certificate whose evidence names its key; the
  ingress side's client context refuses a TLS 1.2-only server.
- OHTTP/HPKE: the egress advertises KEM X25519 (0x0020) with HKDF-SHA256 and AES-128-GCM,
  AES-256-GCM, ChaCha20-Poly1305 only; a request or key config with any other KEM/KDF/AEAD is a
  clean ``OhttpError``.
- KBS client: an https Trustee is verified against the trust store by default, so a self-signed
  Trustee is refused before any HTTP request is sent; trusting its CA explicitly makes it work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import re
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from agents.errors import ConfigError
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.config import AA_SETTINGS
from attestation_agent.daemon import kbs_config
from attestation_agent.errors import KbsUnavailableError
from attestation_agent.evidence import LocalEvidence
from attestation_agent.kbs.client import KbsClient
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.trust import trustee_ssl_context
from data_hub.config import CDH_SETTINGS
from data_hub.trustees import default_config_factory
from gateway.hpke import AEAD_AES_128_GCM, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, KDF_HKDF_SHA256
from gateway.ingress_pool import client_context
from gateway.ohttp import (
    ClientRequest,
    KeyConfig,
    OhttpError,
    RequestDecoder,
    decode_key_config_list,
    encode_key_config_list,
    new_key_config,
)
from gateway.ohttp_egress import SUITES
from gateway.ratls_cert import check_binding, parse_certificate
from tests.integration.test_gateway_support import attestation_agent, our_egress
from tests.integration.test_kbs_client import MODEL_KEY, client_for
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

KEM_X25519 = 0x0020
KEM_P256 = 0x0010
KDF_HKDF_SHA384 = 0x0002
AEAD_EXPORT_ONLY = 0xFFFF


# --- rats-tls --------------------------------------------------------------------------------------

def tls12_only_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["rats-tls"])
    return ctx


@contextlib.asynccontextmanager
async def counting_backend() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP backend that records how many connections reached it."""
    hits: list[int] = []

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], hits
    finally:
        server.close()
        await server.wait_closed()


async def test_egress_is_tls13_only_with_rats_tls_alpn_and_a_p256_ecdsa_sha256_certificate() -> None:
    async with attestation_agent() as (aa_sock, _), counting_backend() as (backend_port, hits), \
            our_egress(aa_sock, backend_port) as (port, _egress):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=tls12_only_client(), server_hostname="tng.internal"),
                15)
            writer.close()
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_context("rats-tls"),
                                    server_hostname="tng.internal"), 15)
        try:
            tls = writer.get_extra_info("ssl_object")
            assert tls.version() == "TLSv1.3"
            assert tls.selected_alpn_protocol() == "rats-tls"
            der = tls.getpeercert(binary_form=True)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
    assert hits == [1], "only the TLS 1.3 connection may reach the backend"
    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert cert.issuer == cert.subject, "self-signed"
    # The evidence in the certificate names this certificate's key (pubkey-hash of its SPKI).
    claims = check_binding(parse_certificate(der))
    assert "pubkey-hash" in claims


async def test_ingress_client_context_refuses_a_tls12_server(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = write_self_signed(tmp_path, key, "127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(cert_path, key_path)

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        assert client_context("rats-tls").minimum_version == ssl.TLSVersion.TLSv1_3
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context("rats-tls"), server_hostname="tng.internal"), 15)
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


# --- OHTTP / HPKE ----------------------------------------------------------------------------------

def test_egress_key_config_advertises_exactly_the_documented_suite() -> None:
    config, _private = new_key_config(7, SUITES)
    encoded = encode_key_config_list([config])
    # RFC 9458 key config: u16 length | key_id | kem_id | 32-byte X25519 key | u16 suites length | suites
    assert struct.unpack_from(">H", encoded, 3)[0] == KEM_X25519
    assert len(config.public_key) == 32
    (decoded,) = decode_key_config_list(encoded)
    assert set(decoded.suites) == {(KDF_HKDF_SHA256, AEAD_AES_128_GCM), (KDF_HKDF_SHA256, AEAD_AES_256_GCM),
                                   (KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305)}
    assert (KDF_HKDF_SHA256, AEAD_AES_128_GCM) == (0x0001, 0x0001)


@pytest.mark.parametrize("aead", [AEAD_AES_128_GCM, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305])
def test_each_advertised_suite_round_trips(aead: int) -> None:
    config, private = new_key_config(1, SUITES)
    request = ClientRequest(config, aead)
    decoder = RequestDecoder({1: private})
    assert decoder.feed(request.header() + request.chunk(b"hello")) == [b"hello"]
    assert decoder.aead_id == aead


@pytest.mark.parametrize("kem, kdf, aead", [
    (KEM_P256, KDF_HKDF_SHA256, AEAD_AES_128_GCM),
    (KEM_X25519, KDF_HKDF_SHA384, AEAD_AES_128_GCM),
    (KEM_X25519, KDF_HKDF_SHA256, AEAD_EXPORT_ONLY),
    (KEM_X25519, KDF_HKDF_SHA256, 0x0004),
])
def test_requests_with_another_suite_are_refused(kem: int, kdf: int, aead: int) -> None:
    config, private = new_key_config(1, SUITES)
    good = ClientRequest(config).header()
    header = bytes([1]) + struct.pack(">HHH", kem, kdf, aead) + good[7:]
    with pytest.raises(OhttpError, match="unsupported OHTTP suite"):
        RequestDecoder({1: private}).feed(header + b"\x05hello")


def test_key_config_with_another_kem_is_refused() -> None:
    config, _ = new_key_config(1, SUITES)
    body = bytearray(KeyConfig(config.key_id, config.public_key, config.suites).encode())
    body[1:3] = struct.pack(">H", KEM_P256)
    with pytest.raises(OhttpError, match="not X25519"):
        decode_key_config_list(struct.pack(">H", len(body)) + bytes(body))


# --- KBS client over https -------------------------------------------------------------------------

def write_self_signed(directory: Path, key: ec.EllipticCurvePrivateKey, ip: str) -> tuple[str, str]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test trustee")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "trustee.pem", directory / "trustee.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@contextlib.asynccontextmanager
async def tls_front(target_port: int, cert_path: str, key_path: str) -> AsyncIterator[int]:
    """An https front for the (plain http) Trustee stand-in: TLS terminated here, bytes piped through."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_kbs_client_verifies_https_trustee_certificates_by_default(tmp_path: Path, repository: Path,
                                                                         secret: bytes) -> None:
    cert_path, key_path = write_self_signed(tmp_path, ec.generate_private_key(ec.SECP256R1()), "127.0.0.1")
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
        port = int(trustee.url.rsplit(":", 1)[1])
        async with tls_front(port, cert_path, key_path) as https_port:
            url = f"https://127.0.0.1:{https_port}/api"
            async with client_for(url) as client:
                with pytest.raises(KbsUnavailableError, match=r"(?i)certificate") as info:
                    await client.get_resource(MODEL_KEY)
            assert secret.decode() not in str(info.value)
            assert not any(trustee.faults.counters.values()), "no request may reach a Trustee we did not verify"
            trusted = ssl.create_default_context(cafile=cert_path)
            async with client_for(url, ssl=trusted) as client:
                assert await client.get_resource(MODEL_KEY) == secret


async def test_kbs_ca_cert_setting_pins_the_trustee_ca(tmp_path: Path, repository: Path, secret: bytes) -> None:
    """``kbs_ca_cert`` (AA and data hub) trusts exactly that CA: its Trustee passes, any other is refused."""
    ours, other = tmp_path / "ours", tmp_path / "other"
    ours.mkdir(), other.mkdir()
    cert_path, key_path = write_self_signed(ours, ec.generate_private_key(ec.SECP256R1()), "127.0.0.1")
    other_cert, other_key = write_self_signed(other, ec.generate_private_key(ec.SECP256R1()), "127.0.0.1")
    aa_settings = {"kbs_dialect": "auto", "kbs_key_algorithm": "auto", "kbs_timeout": 10.0, "kbs_ca_cert": cert_path}
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
        port = int(trustee.url.rsplit(":", 1)[1])
        async with tls_front(port, cert_path, key_path) as good, tls_front(port, other_cert, other_key) as bad:
            for https_port, ok in ((good, True), (bad, False)):
                url = f"https://127.0.0.1:{https_port}/api"
                configs = (kbs_config(url, aa_settings),
                           default_config_factory(ssl=trustee_ssl_context(cert_path))(url))
                for config in configs:
                    assert config is not None and config.ssl.verify_mode == ssl.CERT_REQUIRED
                    assert config.ssl.check_hostname
                    async with KbsClient(config, LocalEvidence(SampleAttester())) as client:
                        if ok:
                            assert await client.get_resource(MODEL_KEY) == secret
                        else:
                            with pytest.raises(KbsUnavailableError, match=r"(?i)certificate"):
                                await client.get_resource(MODEL_KEY)


def test_kbs_ca_cert_errors_name_the_key_and_file(tmp_path: Path) -> None:
    assert trustee_ssl_context(None) is None
    with pytest.raises(ConfigError, match=r"kbs_ca_cert: .*/missing.pem does not exist"):
        trustee_ssl_context(str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"kbs_ca_cert: cannot load CA certificates from .*junk.pem"):
        trustee_ssl_context(str(junk))


def test_no_daemon_setting_turns_tls_verification_off() -> None:
    """Verification can only be changed in code (``KbsClientConfig.ssl``), never by a config key."""
    pattern = re.compile(r"insecure|ssl|tls|verif|cert")
    names = {s.name for s in (*AA_SETTINGS, *CDH_SETTINGS) if pattern.search(s.name)}
    # skip_sealed_secret_verification is about sealed-secret signatures and logs a loud warning
    # (docs/configuration.md); kbs_ca_cert narrows trust to one CA (tested above), it cannot widen it.
    assert names == {"skip_sealed_secret_verification", "kbs_ca_cert"}
