"""The stand-in's throw-away token-signing PKI: a self-signed test root CA and two leaf signers.

Development and tests only. A real Trustee AS signs tokens with a configured key whose
certificate chain travels in the token header (``jwk.x5c``); verifiers such as TNG check that
chain against ``trusted_certs_paths``. To exercise that path without a real deployment the
stand-in mints a root CA plus an RSA leaf (RS384, the Simple broker) and an EC P-256 leaf (ES256)
and exposes the root PEM path. Keys are written 0600 into ``ca_dir`` and reused when present.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agents.errors import ConfigError

ROOT_CERT = "root-ca.pem"
ROOT_KEY = "root-ca.key"
LEAVES = {"RS384": ("token-rs384.pem", "token-rs384.key"), "ES256": ("token-es256.pem", "token-es256.key")}
_VALIDITY = datetime.timedelta(days=3650)

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Signer:
    """A leaf signing key with its chain ``[leaf, root]``."""

    alg: str
    key: SigningKey
    chain: tuple[x509.Certificate, ...]

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


@dataclass(frozen=True)
class TestCa:
    root_cert_path: Path
    root: x509.Certificate
    signers: dict[str, Signer]

    __test__ = False  # not a pytest test class despite the name


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CAI Trustee stand-in (TEST ONLY)"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: SigningKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _create(directory: Path) -> None:
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name("Trustee stand-in test root CA")
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name).issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    for alg, (cert_file, key_file) in LEAVES.items():
        key: SigningKey = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS384"
                           else ec.generate_private_key(ec.SECP256R1()))
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(f"Trustee stand-in token signer {alg}")).issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256())
        )
        _write(directory / key_file, _key_pem(key), 0o600)
        _write(directory / cert_file, leaf.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(directory / ROOT_KEY, _key_pem(root_key), 0o600)
    # The root certificate is written last: its presence marks a complete CA directory.
    _write(directory / ROOT_CERT, root.public_bytes(serialization.Encoding.PEM), 0o644)


def load_or_create(directory: Path) -> TestCa:
    """Load the test CA from ``directory``, creating it first when it is not there yet."""
    if not (directory / ROOT_CERT).exists():
        _create(directory)
    try:
        root = x509.load_pem_x509_certificate((directory / ROOT_CERT).read_bytes())
        signers = {}
        for alg, (cert_file, key_file) in LEAVES.items():
            leaf = x509.load_pem_x509_certificate((directory / cert_file).read_bytes())
            # Our own freshly written keys: skip the (slow) RSA consistency check.
            key = serialization.load_pem_private_key((directory / key_file).read_bytes(), password=None,
                                                     unsafe_skip_rsa_key_validation=True)
            if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_file} is not an RSA or EC key")
            signers[alg] = Signer(alg=alg, key=key, chain=(leaf, root))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"test CA directory {directory} is incomplete or corrupt: {exc}",
                          hint="delete the directory to have the stand-in recreate it") from None
    return TestCa(root_cert_path=directory / ROOT_CERT, root=root, signers=signers)
