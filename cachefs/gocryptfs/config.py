"""``gocryptfs.conf``: parsing, validation, the password rule, scrypt, and master-key unwrap.

Feature-flag policy (decided per flag; see docs/cachefs.md):

* required: ``HKDF`` (every 2.x ``-init``; pre-HKDF volumes used raw keys and 96-bit wrap nonces)
  and ``GCMIV128`` (AES-256-GCM content with 16-byte nonces).
* supported: ``DirIV``, ``EMENames``, ``LongNames``, ``Raw64`` (the defaults), ``LongNameMax``,
  ``PlaintextNames``, and volumes without ``DirIV`` (``-deterministic-names``, all-zero IVs).
* refused with :class:`UnsupportedVolumeError`: ``AESSIV`` (reverse-mode/``-aessiv`` layout),
  ``XChaCha20Poly1305`` (``-xchacha``; needs HChaCha20, not in ``cryptography``), ``FIDO2`` (needs a
  hardware token), EME names without ``Raw64`` (pre-1.3 padded base64), and any unknown flag.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agents import jsonutil
from cachefs.errors import UnsupportedVolumeError, VolumeFormatError, WrongPasswordError
from cachefs.gocryptfs.keys import INFO_GCM_CONTENT, MASTER_KEY_LEN, hkdf_sha256

CONF_NAME = "gocryptfs.conf"
MAX_CONF_BYTES = 64 * 1024
MAX_PASSWORD_BYTES = 2048
CONF_VERSION = 2
DEFAULT_LONG_NAME_MAX = 255

KNOWN_FLAGS = frozenset({
    "PlaintextNames", "DirIV", "EMENames", "GCMIV128", "LongNames", "LongNameMax", "AESSIV", "Raw64",
    "HKDF", "FIDO2", "XChaCha20Poly1305",
})
DEFAULT_FLAGS = ("HKDF", "GCMIV128", "DirIV", "EMENames", "LongNames", "Raw64")
_REFUSED = {
    "AESSIV": "AES-SIV content encryption (-aessiv / reverse mode)",
    "XChaCha20Poly1305": "XChaCha20-Poly1305 content encryption (-xchacha)",
    "FIDO2": "a FIDO2-token-wrapped master key (-fido2)",
}
_NAME_FLAGS = ("EMENames", "DirIV", "LongNames", "Raw64", "LongNameMax")

# scrypt bounds: gocryptfs refuses weaker parameters; the upper bounds keep a hostile config
# from making us allocate unbounded memory (N=2^28, r=8 already needs 256 GiB... cap at 2^22).
MIN_SCRYPT_N = 1 << 10
MAX_SCRYPT_N = 1 << 22
MAX_SCRYPT_R = 64
MAX_SCRYPT_P = 16
WRAP_NONCE_LEN = 16
ENCRYPTED_KEY_LEN = WRAP_NONCE_LEN + MASTER_KEY_LEN + 16


@dataclass(frozen=True)
class ScryptParams:
    """scrypt KDF parameters of a volume (``ScryptObject``)."""

    salt: bytes
    n: int
    r: int
    p: int
    key_len: int


@dataclass(frozen=True)
class VolumeConfig:
    """A validated ``gocryptfs.conf``."""

    creator: str
    encrypted_key: bytes = field(repr=False)
    scrypt: ScryptParams
    version: int
    feature_flags: tuple[str, ...]
    long_name_max: int = DEFAULT_LONG_NAME_MAX

    def has(self, flag: str) -> bool:
        """True if ``flag`` is set."""
        return flag in self.feature_flags

    @property
    def plaintext_names(self) -> bool:
        return self.has("PlaintextNames")

    @property
    def dir_iv(self) -> bool:
        return self.has("DirIV")

    @property
    def long_names(self) -> bool:
        return self.has("LongNames")


def _b64_std(value: Any, what: str, where: str) -> bytes:
    if not isinstance(value, str):
        raise VolumeFormatError(f"{where}: {what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise VolumeFormatError(f"{where}: {what} is not valid base64",
                                hint="the config file is corrupt; restore it from the original volume") from None


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise VolumeFormatError(f"{where}: ScryptObject.{key} must be an integer")
    return value


def parse_config(data: bytes, where: str = CONF_NAME) -> VolumeConfig:
    """Parse and validate ``gocryptfs.conf`` bytes; refuse unknown or unsupported features."""
    if len(data) > MAX_CONF_BYTES:
        raise VolumeFormatError(f"{where} is {len(data)} bytes, larger than any real gocryptfs.conf",
                                hint="point cachefs at a gocryptfs cipher directory")
    try:
        obj = jsonutil.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VolumeFormatError(f"{where} is not valid JSON", hint="is this a gocryptfs cipher directory?") from None
    if not isinstance(obj, dict):
        raise VolumeFormatError(f"{where}: top level must be a JSON object")
    version = obj.get("Version")
    if version != CONF_VERSION or isinstance(version, bool):
        raise UnsupportedVolumeError(f"{where}: config Version {version!r} is not supported (only 2)",
                                     hint="re-create the volume with gocryptfs 1.3 or later")
    flags_raw = obj.get("FeatureFlags")
    if not isinstance(flags_raw, list) or not all(isinstance(f, str) for f in flags_raw):
        raise VolumeFormatError(f"{where}: FeatureFlags must be a list of strings")
    flags = tuple(flags_raw)
    unknown = sorted(set(flags) - KNOWN_FLAGS)
    if unknown:
        raise UnsupportedVolumeError(f"{where}: unknown feature flag {unknown[0]!r}",
                                     hint="the volume was made by a newer gocryptfs; use a volume made with "
                                          "default gocryptfs -init options")
    if len(set(flags)) != len(flags):
        raise VolumeFormatError(f"{where}: duplicate feature flags")
    for flag, what in _REFUSED.items():
        if flag in flags:
            raise UnsupportedVolumeError(f"{where}: volume uses {what}, which cachefs does not support",
                                         hint="re-create the volume with default gocryptfs -init options")
    for required in ("HKDF", "GCMIV128"):
        if required not in flags:
            raise UnsupportedVolumeError(f"{where}: feature flag {required} is missing; volumes from gocryptfs "
                                         "before 1.3 / without HKDF are not supported",
                                         hint="re-create the volume with gocryptfs 2.x defaults")
    if "PlaintextNames" in flags:
        clash = [f for f in _NAME_FLAGS if f in flags]
        if clash:
            raise VolumeFormatError(f"{where}: PlaintextNames conflicts with {clash[0]}")
    else:
        if "EMENames" not in flags:
            raise UnsupportedVolumeError(f"{where}: names without EMENames (CBC, gocryptfs 0.x) are not supported")
        if "Raw64" not in flags:
            raise UnsupportedVolumeError(f"{where}: padded base64 names (no Raw64 flag) are not supported",
                                         hint="re-create the volume with gocryptfs 1.3 or later")
    long_name_max = DEFAULT_LONG_NAME_MAX
    has_lnm_field = "LongNameMax" in obj and obj["LongNameMax"] not in (None, 0)
    if ("LongNameMax" in flags) != has_lnm_field:
        raise VolumeFormatError(f"{where}: the LongNameMax flag and field disagree")
    if has_lnm_field:
        value = obj["LongNameMax"]
        if not isinstance(value, int) or isinstance(value, bool) or not 62 <= value <= 255:
            raise VolumeFormatError(f"{where}: LongNameMax must be an integer in 62..255")
        long_name_max = value
    scrypt_obj = obj.get("ScryptObject")
    if not isinstance(scrypt_obj, dict):
        raise VolumeFormatError(f"{where}: ScryptObject missing or not an object")
    salt = _b64_std(scrypt_obj.get("Salt"), "ScryptObject.Salt", where)
    params = ScryptParams(salt, _int(scrypt_obj, "N", where), _int(scrypt_obj, "R", where),
                          _int(scrypt_obj, "P", where), _int(scrypt_obj, "KeyLen", where))
    if len(salt) < 32:
        raise VolumeFormatError(f"{where}: scrypt salt is {len(salt)} bytes, must be at least 32")
    if not MIN_SCRYPT_N <= params.n <= MAX_SCRYPT_N or params.n & (params.n - 1):
        raise VolumeFormatError(f"{where}: scrypt N={params.n} must be a power of two in 2^10..2^22")
    if not 8 <= params.r <= MAX_SCRYPT_R or not 1 <= params.p <= MAX_SCRYPT_P:
        raise VolumeFormatError(f"{where}: scrypt R={params.r}/P={params.p} out of range (R 8..64, P 1..16)")
    if params.key_len != MASTER_KEY_LEN:
        raise VolumeFormatError(f"{where}: scrypt KeyLen={params.key_len} must be 32")
    encrypted_key = _b64_std(obj.get("EncryptedKey"), "EncryptedKey", where)
    if len(encrypted_key) != ENCRYPTED_KEY_LEN:
        raise VolumeFormatError(f"{where}: EncryptedKey is {len(encrypted_key)} bytes, expected {ENCRYPTED_KEY_LEN}")
    creator = obj.get("Creator", "")
    if not isinstance(creator, str):
        raise VolumeFormatError(f"{where}: Creator must be a string")
    return VolumeConfig(creator=creator[:200], encrypted_key=encrypted_key, scrypt=params, version=version,
                        feature_flags=flags, long_name_max=long_name_max)


def password_from_secret(secret: bytes, where: str = "the key file") -> bytes:
    """Apply gocryptfs' passfile rule: the password is the bytes before the first newline.

    The data hub stores the attested secret as released by Trustee; model owners typically did
    ``cat password | gocryptfs -init``, so a trailing newline must be dropped exactly as gocryptfs does.
    """
    password = secret.split(b"\n", 1)[0]
    if not password:
        raise WrongPasswordError(f"the password in {where} is empty", hint="check the model key stored in Trustee")
    if len(password) > MAX_PASSWORD_BYTES:
        raise WrongPasswordError(f"the password in {where} is longer than {MAX_PASSWORD_BYTES} bytes",
                                 hint="gocryptfs accepts at most 2048 bytes")
    return password


def derive_kek(password: bytes, params: ScryptParams) -> bytes:
    """scrypt(password) → key-encryption key. CPU-heavy (≈0.2 s at N=2^16): run it in a thread."""
    maxmem = 128 * params.r * (params.n + params.p + 2) + (16 << 20)
    return hashlib.scrypt(password, salt=params.salt, n=params.n, r=params.r, p=params.p,
                          maxmem=maxmem, dklen=params.key_len)


def _wrap_aad() -> bytes:
    # The key wrap reuses content-block AAD for block 0 without a file ID.
    return bytes(8)


def unwrap_master_key(config: VolumeConfig, kek: bytes) -> bytes:
    """Decrypt ``EncryptedKey`` with the KEK; a tag failure means the password is wrong."""
    wrap_key = hkdf_sha256(kek, INFO_GCM_CONTENT)
    nonce, body = config.encrypted_key[:WRAP_NONCE_LEN], config.encrypted_key[WRAP_NONCE_LEN:]
    try:
        master = AESGCM(wrap_key).decrypt(nonce, body, _wrap_aad())
    except InvalidTag:
        raise WrongPasswordError("wrong password for the gocryptfs volume (master key did not authenticate)",
                                 hint="check that the model key in Trustee is the volume's password") from None
    if len(master) != MASTER_KEY_LEN or not any(master):
        raise VolumeFormatError("the unwrapped master key is malformed")
    return master


def unlock(config: VolumeConfig, password: bytes) -> bytes:
    """Password → master key (scrypt + unwrap)."""
    return unwrap_master_key(config, derive_kek(password, config.scrypt))


def wrap_master_key(master_key: bytes, kek: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt the master key for ``EncryptedKey`` (the encryptor's direction)."""
    nonce = os.urandom(WRAP_NONCE_LEN) if nonce is None else nonce
    return nonce + AESGCM(hkdf_sha256(kek, INFO_GCM_CONTENT)).encrypt(nonce, master_key, _wrap_aad())


def build_config(master_key: bytes, password: bytes, *, scrypt_n: int = 1 << 16, creator: str = "cachefs",
                 salt: bytes | None = None) -> bytes:
    """A new default-flags ``gocryptfs.conf`` (Go ``MarshalIndent`` layout, tab indent, trailing newline)."""
    params = ScryptParams(salt=os.urandom(32) if salt is None else salt, n=scrypt_n, r=8, p=1, key_len=32)
    encrypted = wrap_master_key(master_key, derive_kek(password, params))
    doc = {
        "Creator": creator,
        "EncryptedKey": base64.b64encode(encrypted).decode(),
        "ScryptObject": {"Salt": base64.b64encode(params.salt).decode(), "N": params.n, "R": params.r,
                         "P": params.p, "KeyLen": params.key_len},
        "Version": CONF_VERSION,
        "FeatureFlags": list(DEFAULT_FLAGS),
    }
    return (json.dumps(doc, indent="\t") + "\n").encode()
