"""The pure gocryptfs codec: vectors (eme_test.go, real gocryptfs configs/volumes) and fuzzing."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachefs.errors import BlockAuthError, CachefsError, UnsupportedVolumeError, VolumeFormatError, WrongPasswordError
from cachefs.gocryptfs import content, names
from cachefs.gocryptfs.config import build_config, parse_config, password_from_secret, unlock
from cachefs.gocryptfs.content import CIPHER_BLOCK, PLAIN_BLOCK, ContentCipher
from cachefs.gocryptfs.eme import Eme
from cachefs.gocryptfs.keys import derive_keys
from cachefs.gocryptfs.symlink import decrypt_target, encrypt_target

# rfjakob/eme eme_test.go TestEnc2048: all-zero key, tweak and 2048-byte input.
EME_2048_HEX = (
    "630500884158a8d41216aaa6351e92ea7ca540a949e73f1d6069afef372eae226d426d8f4dbbce5"
    "05051fcd596e7b32cdd1e44a40bcce0887ebbc160f779dafbb68bc25a40040987cdb5aba19b956e1"
    "1dd69d7ce74d1d8788903254217300f3afd9a92cea395a89fd842256d3919ac303c1d1a21ec44cb2"
    "898acabb3d0e04e05845e9183a64b4148f9614f62f79fa971799c896c58cd2b285cb00e40720b5c1"
    "18ef1c0dbf5e51f09cd10db672b9c22c53d4bf5dabf16cfcbc382e3209e7ba27955b2afa055924d2"
    "155319205f964492e0e88172f4ffadca35cd3e694fd3d803f610edc1696113996749bdb2a2dfb8fb"
    "d92f0ef723146f93d969d1de4cc1c19efa33785f135a1203005ba2208fcd6b9f0d0e942993671b0c"
    "5baefe7ed0bbfe070a9e1d26eed37228ceda64b70c25a59fd040703acc385c6e4093a8e258984371"
    "c2d811c01723b87c820a55470501b245d97a0c7564c44e1e31a89457c1125198d27ac2dec67f7237"
    "c781f9f622e420da471af577fa6ad8014bb1dad52dc450e37ebeeb1f1b7ba3c3d5796c6646bd052f"
    "e66cf61d22f6e58efcbf0328d3b6e1088603e54bfd2da241c970fec58c7d21fc2b2f1b4b79552a92"
    "500a7e6848a22ec47ee362cef9787af3b26439470992c8d103997395aefeff10802673d4630009e4"
    "e5ed26038d5f05c589e64046274d5ff133398e4bab08ca71c0ce93dbd0657785b150c9e418339e8e"
    "47d02ae7322b5b55364dfe10dd02d54dc5f2dbe82e55bcf0503b30d709301fc7f63cd15e7e124518"
    "9405b1364b6074c0e493f7beb273859864e95643c7d914279d95f220247618b7a5c896d604e9ce88"
    "e0a3ab434cfe97cabc520b20e2fffee958972e82e98b952cbf3567be560a8385e520b636829252ca"
    "e16ac882d1d3dde447a90af52be7967f357a36382c9672a659ed0ffae9ee7b969c8c788f982fbd52"
    "4efb6b852f65be5f371032691e9ef6e5a217607cf990e5351b251f841834045d9bd54633e8bb0d19"
    "569377f805857a503a2642dfc06e2063dfd465dcae83b1e362394cdf20bd6a6d5dd0bacad7f2d407"
    "e597b004e90683bfc23b92796bb0cdf67752765dbba2d1332848adcb83e60b7f3f8c397a3aa5de08"
    "bf491676a18ee4a6ed9b342b33c081794365a72668f273a655e150fa36686aa5dfbc87ccda9cbe79"
    "82e531044cd9fcea68ca1a5034ee64e0558b7c6af56808c0343506dccf39e4ca8634518e6420c107"
    "b7d5fe89943e9f40044b2ae7f047d97275ec4763b41416fb3faff897e6ee0047f97b215b02ee09a3"
    "f533cba2ee131a0aa68772860759325ea4dc7ab86528d0aff55f96d00a908ea32f9fa8bd0640d632"
    "bf0d812f43beb03e6c6d4a654b41f27143fde4aa7ed16ae4bba939fbed8ae28dace83fcb49fd3ca9"
    "10512902fc696419968e260901796f3af75d059c6e93a8f53b445f921e60d9429007c78107309a86"
    "102b923dbb2f1fa04f84539c7c58ed45b40d4b267541d8f2f932ae75dfc13ef906089e1c847635aa"
    "ada201e32301f326a733f4a99caa56fa00ccd6de2752a4495408bb4c930eaf84c97a28767a036f65"
    "627efa868adeee1cf47840e67ac4489381da1513dd3d1707a5ad91ac4ba1c35714b1cd77e0555161"
    "2cdfb88187a5a39afd5b2a54f88aeb9605c1e01cd7a976a168c6e40eddcb20f09fe54a07a7c971ed"
    "a08789b41e450f46a30c2b3494f30a06073631d151ae048793fe32ff08a08b8693d1da71451f7ff2"
    "438d7a521f8c97e4bc8ee744c1574d296c799d3f94e81522ce81def780660cee061d3110c1f18133"
    "dca1daabb2268aad76327f3cb6ae8c96fc66b5506f5644f2652d022d7b616209970f78b8e5c9a74f"
    "5d1fc31037d01733bff097a661d4331adc087b84e32afb9d82a0614ea459022918f8ca60e74b7c68"
    "65d3e86e6ae4acf9546985dc5ccf242dd9ab0486bde99a1e656499cbfceef8de5beafda89965bf20"
    "8c70f4a0f8f677792962b09e0a355d53bbacb4a7acc16e50aa483994d85ca7e28a34ee52843d4f27"
    "acfb3b5347b89099fd01642b605f87f82283bb146aa319048462fe11a71d0fa064e825f69a502ae5"
    "39240b13a2568383f80c30ebb9a29d2de4c45e6405bd8d1586fe5eef0477d3c21434b3471c0f864d"
    "d4c2f135278645ef1b1ebb4d6954f92763d787ad3d0bb48409782cd803a877027ae105511cdaefe0"
    "110f9f6c65f2a34ad12532f4715c0341346dc06bcc4bb0e5c04ffdfd3f625e7e3811a760a2cfa9cb"
    "e1c2914882c192b793aeeb3ab8b03fd8be7e248fc9e5aa0c651d4bb5318c8a266b735ddc167d8374"
    "99a3b38dcdfe188e25172eb974eb0eff20cc5c6e42e505fea7a3b6edfdf93b7062737ea00f72a415"
    "c4dfd3cd4fab2dad812d88d02690f606b52dcfb0ab220dc65a7dee6f31e951324a1c442adfe9cf67"
    "2646876bedc2c2cb71bac583f3cf4ea6769eb54d22bf22b0d908a297caa13767ed14c44b738799e8"
    "21885b2b2988a9b88a2f35bf8d307543af9007fadcfcc273f8029c2fe3d59449c5f193ca7f8986ca"
    "7451d9a3ee14335b10868421b64ea1605d48d4fc22e378f82b7fe3e88aada30b4c545408b87b2451"
    "1e371f25d1a94e7b78a6a7aec848e6f82614f96ef5ed8705e0adec0f889c1860cf8211d716fddf31"
    "9862290019a4387fb77c89a5ae7d0074fa72024f2e5096d39ebac8e8ed02191879585394987fea3a"
    "07a720d6880910629cdcd83a02ffd98830d2f57ee6c53b5cfedb42ec7c3d925cf3080c343f21711a"
    "90f117e9eaf91402d09b83e83bd18d1c4e3d165a8b9bac7adca12cb0147bfc4c6e2166c57b8182e6"
    "3fbc698881ed5b329eb491eb98050a922c15804021013bf08942db9ee6d8f2a2c4eb93771340ed9e"
    "323d09e4256b7e5ac"
)

PASSWORD = b"correct horse battery staple"


@pytest.fixture(scope="module")
def real_conf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A gocryptfs.conf written by the real gocryptfs binary (the oracle)."""
    d = tmp_path_factory.mktemp("gcconf")
    (d / "pw").write_bytes(PASSWORD + b"\n")
    (d / "c").mkdir()
    subprocess.run(["gocryptfs", "-init", "-q", "-scryptn", "10", "-passfile", str(d / "pw"), str(d / "c")],
                   check=True, capture_output=True, timeout=60)
    return (d / "c" / "gocryptfs.conf").read_bytes()


# -- EME ------------------------------------------------------------------------------------------

def test_eme_vectors_from_eme_test_go() -> None:
    eme = Eme(bytes(32))
    assert eme.encrypt(bytes(16), bytes(16)).hex() == "f1b9ce8ca15a4ba9fb476905434b9fd3"
    out = eme.encrypt(bytes(16), bytes(2048))
    assert out.hex() == EME_2048_HEX
    assert eme.decrypt(bytes(16), out) == bytes(2048)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16),
       st.integers(1, 128).flatmap(lambda m: st.binary(min_size=16 * m, max_size=16 * m)))
@settings(max_examples=60, deadline=None)
def test_eme_roundtrip_and_wide_block(key: bytes, tweak: bytes, data: bytes) -> None:
    eme = Eme(key)
    ct = eme.encrypt(tweak, data)
    assert len(ct) == len(data) and eme.decrypt(tweak, ct) == data
    flipped = bytes([data[-1] ^ 1])
    ct2 = eme.encrypt(tweak, data[:-1] + flipped)
    assert ct2[:16] != ct[:16]  # a change in the last block changes the first: wide-block property


@pytest.mark.parametrize("size", [0, 15, 17, 2064])
def test_eme_rejects_bad_lengths(size: int) -> None:
    with pytest.raises(ValueError):
        Eme(bytes(32)).encrypt(bytes(16), bytes(size))


# -- names ----------------------------------------------------------------------------------------

@given(st.binary(min_size=0, max_size=64))
def test_raw64_roundtrip(data: bytes) -> None:
    encoded = names.raw64_encode(data)
    if data:
        assert names.raw64_decode(encoded) == data
    else:
        with pytest.raises(ValueError):  # an empty name is never valid
            names.raw64_decode(encoded)


@given(st.text(max_size=80))
def test_raw64_decode_is_strict(text: str) -> None:
    try:
        data = names.raw64_decode(text)
    except ValueError:
        return
    assert names.raw64_encode(data) == text


@pytest.mark.parametrize("bad", ["abc=", "ab\ncd", "ab+c", "ab/c", "A", "AB", "ab cd"])
def test_raw64_rejects_non_canonical(bad: str) -> None:
    # "AB" has non-zero trailing bits, so it is not the canonical encoding of any byte string.
    with pytest.raises(ValueError):
        names.raw64_decode(bad)


@given(st.binary(max_size=300))
def test_pad16_roundtrip(data: bytes) -> None:
    padded = names.pad16(data)
    assert len(padded) % 16 == 0 and len(padded) > len(data)
    assert names.unpad16(padded) == data


def _codec() -> tuple[names.NameCodec, bytes]:
    conf = parse_config(build_config(os.urandom(32), b"pw", scrypt_n=1 << 10))
    return names.NameCodec(conf, os.urandom(32)), os.urandom(16)


VALID_NAMES = st.binary(min_size=1, max_size=255).filter(lambda b: b"/" not in b and b"\0" not in b
                                                          and b not in (b".", b".."))


@given(VALID_NAMES)
@settings(max_examples=80, deadline=None)
def test_name_roundtrip_and_long_names(name: bytes) -> None:
    codec, iv = _codec()
    enc = codec.encrypt(name, iv)
    if len(name) >= 176:
        assert enc.stored.startswith(names.LONGNAME_PREFIX) and enc.longname_content is not None
        encoded = names.parse_longname_file(enc.stored, enc.longname_content)
    else:
        assert enc.longname_content is None and len(enc.stored) <= 255
        encoded = enc.stored
    assert codec.decrypt(encoded, iv) == name


@given(st.text(max_size=120))
@settings(max_examples=150, deadline=None)
def test_name_decrypt_random_input_only_valueerror(text: str) -> None:
    codec, iv = _codec()
    try:
        plain = codec.decrypt(text, iv)
    except ValueError:
        return
    assert plain and b"/" not in plain


def test_name_decrypt_rejects_injected_names() -> None:
    codec, iv = _codec()
    eme = Eme(os.urandom(32))  # a different key: the decrypted padding is garbage → rejected
    for evil in (b"..", b"a/b", b"x\0y"):
        with pytest.raises(ValueError):
            codec.encrypt(evil, iv)
    stored = names.raw64_encode(eme.encrypt(iv, names.pad16(b"abc")))
    with pytest.raises(ValueError):
        codec.decrypt(stored, iv)


def test_longname_hash_mismatch_rejected() -> None:
    stored = names.longname_hash("A" * 300)
    with pytest.raises(ValueError):
        names.parse_longname_file(stored, b"B" * 300)


def test_diriv_validation() -> None:
    assert names.parse_diriv(b"\1" * 16, "d") == b"\1" * 16
    for bad in (b"", bytes(16), b"\1" * 15, b"\1" * 17):
        with pytest.raises(VolumeFormatError):
            names.parse_diriv(bad, "d")


# -- config ---------------------------------------------------------------------------------------

def test_real_config_parses_and_unlocks(real_conf: bytes) -> None:
    conf = parse_config(real_conf)
    assert conf.version == 2 and conf.dir_iv and conf.long_names and not conf.plaintext_names
    assert conf.feature_flags == ("HKDF", "GCMIV128", "DirIV", "EMENames", "LongNames", "Raw64")
    master = unlock(conf, password_from_secret(PASSWORD + b"\n"))
    assert len(master) == 32
    assert "EncryptedKey" not in repr(conf) and conf.encrypted_key.hex() not in repr(conf)


def test_wrong_password_is_clear_and_secret_free(real_conf: bytes) -> None:
    conf = parse_config(real_conf)
    with pytest.raises(WrongPasswordError) as info:
        unlock(conf, b"hunter2-wrong")
    assert "wrong password" in str(info.value) and "hunter2" not in str(info.value)


def test_build_config_roundtrip_and_layout() -> None:
    master = os.urandom(32)
    data = build_config(master, b"pw", scrypt_n=1 << 10)
    assert data.startswith(b"{\n\t\"Creator\"")
    assert unlock(parse_config(data), b"pw") == master


def test_password_first_line_rule() -> None:
    assert password_from_secret(b"abc\ndef\n") == b"abc"
    assert password_from_secret(b"abc\r\n") == b"abc\r"  # gocryptfs does not strip \r
    for bad in (b"", b"\nabc", b"x" * 2049):
        with pytest.raises(WrongPasswordError):
            password_from_secret(bad)


def _mutate(conf: bytes, **changes: object) -> bytes:
    obj = json.loads(conf)
    for key, value in changes.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(obj).encode()


@pytest.mark.parametrize("flags,error", [
    (["HKDF", "GCMIV128", "DirIV", "EMENames", "LongNames", "Raw64", "Future"], UnsupportedVolumeError),
    (["HKDF", "GCMIV128", "DirIV", "EMENames", "LongNames", "Raw64", "AESSIV"], UnsupportedVolumeError),
    (["HKDF", "DirIV", "EMENames", "LongNames", "Raw64", "XChaCha20Poly1305"], UnsupportedVolumeError),
    (["HKDF", "GCMIV128", "DirIV", "EMENames", "LongNames", "Raw64", "FIDO2"], UnsupportedVolumeError),
    (["GCMIV128", "DirIV", "EMENames", "LongNames", "Raw64"], UnsupportedVolumeError),
    (["HKDF", "GCMIV128", "DirIV", "EMENames", "LongNames"], UnsupportedVolumeError),
    (["HKDF", "GCMIV128", "PlaintextNames", "DirIV"], VolumeFormatError),
    (["HKDF", "GCMIV128", "DirIV", "EMENames", "LongNames", "Raw64", "LongNameMax"], VolumeFormatError),
])
def test_feature_flag_policy(real_conf: bytes, flags: list[str], error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        parse_config(_mutate(real_conf, FeatureFlags=flags))
    assert "gocryptfs.conf" in str(info.value)


def test_supported_optional_flags(real_conf: bytes) -> None:
    conf = parse_config(_mutate(real_conf, FeatureFlags=["HKDF", "GCMIV128", "PlaintextNames"]))
    assert conf.plaintext_names
    conf = parse_config(_mutate(real_conf, FeatureFlags=["HKDF", "GCMIV128", "EMENames", "LongNames", "Raw64"]))
    assert not conf.dir_iv  # -deterministic-names
    conf = parse_config(_mutate(real_conf, LongNameMax=100,
                                FeatureFlags=[*parse_config(real_conf).feature_flags, "LongNameMax"]))
    assert conf.long_name_max == 100


@pytest.mark.parametrize("changes", [
    {"Version": 3}, {"Version": None}, {"EncryptedKey": "AAAA"}, {"EncryptedKey": "not base64!"},
    {"ScryptObject": {"Salt": base64.b64encode(b"s" * 32).decode(), "N": 1000, "R": 8, "P": 1, "KeyLen": 32}},
    {"ScryptObject": {"Salt": base64.b64encode(b"s" * 8).decode(), "N": 1024, "R": 8, "P": 1, "KeyLen": 32}},
    {"ScryptObject": {"Salt": base64.b64encode(b"s" * 32).decode(), "N": 1 << 30, "R": 8, "P": 1, "KeyLen": 32}},
    {"ScryptObject": "x"}, {"FeatureFlags": "HKDF"},
])
def test_bad_configs_rejected(real_conf: bytes, changes: dict[str, object]) -> None:
    with pytest.raises(VolumeFormatError):
        parse_config(_mutate(real_conf, **changes))


@given(st.binary(max_size=600))
@settings(max_examples=200)
def test_config_fuzz_random_bytes(data: bytes) -> None:
    try:
        parse_config(data)
    except CachefsError:
        pass


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_config_fuzz_mutations(real_conf: bytes, data: st.DataObject) -> None:
    raw = bytearray(real_conf)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    try:
        parse_config(bytes(raw))
    except CachefsError:
        pass


# -- content --------------------------------------------------------------------------------------

def test_size_arithmetic_known_values() -> None:
    assert content.cipher_size(0) == 0 and content.plain_size(0) == 0
    assert content.cipher_size(5000) == 5082
    assert content.cipher_size(1 << 30) == 1_082_130_450
    assert content.plain_size(1_082_130_450) == 1 << 30
    assert content.plain_size(18) == 0  # header only
    for bad in (1, 17, 18 + 1, 18 + 32, 18 + CIPHER_BLOCK + 32):
        with pytest.raises(VolumeFormatError):
            content.plain_size(bad)


@given(st.integers(0, 1 << 44))
def test_size_roundtrip(plain: int) -> None:
    assert content.plain_size(content.cipher_size(plain)) == plain


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 22), st.integers(0, 1 << 40))
def test_block_span_covers_request(offset: int, length: int, size: int) -> None:
    first, end = content.block_span(offset, length, size)
    stop = min(offset + length, size)
    if stop > offset:
        assert first * PLAIN_BLOCK <= offset < end * PLAIN_BLOCK and stop <= end * PLAIN_BLOCK
        assert (end - 1) * PLAIN_BLOCK < stop
    else:
        assert first == end


def test_header_validation() -> None:
    fid = os.urandom(16)
    assert content.parse_header(content.make_header(fid)) == fid
    for bad in (b"", bytes(18), b"\x00\x01" + fid, b"\x00\x02" + bytes(16), b"\x00\x02" + fid[:15]):
        with pytest.raises(VolumeFormatError):
            content.parse_header(bad)


@pytest.fixture(scope="module")
def cipher() -> ContentCipher:
    return ContentCipher(derive_keys(os.urandom(32)).content)


@given(st.binary(max_size=3 * PLAIN_BLOCK + 100))
@settings(max_examples=40, deadline=None)
def test_content_roundtrip(cipher: ContentCipher, plain: bytes) -> None:
    ct = cipher.encrypt_file(plain)
    assert len(ct) == content.cipher_size(len(plain))
    if plain:
        fid = content.parse_header(ct[:18])
        assert bytes(cipher.decrypt_blocks(ct[18:], 0, fid)) == plain
        if len(plain) > PLAIN_BLOCK:  # decrypt from the middle: block numbers bind position
            assert bytes(cipher.decrypt_blocks(ct[18 + CIPHER_BLOCK:], 1, fid)) == plain[PLAIN_BLOCK:]
            with pytest.raises(BlockAuthError):
                cipher.decrypt_blocks(ct[18 + CIPHER_BLOCK:], 0, fid)


def test_flipped_byte_names_the_block_and_holes(cipher: ContentCipher) -> None:
    plain = os.urandom(3 * PLAIN_BLOCK)
    ct = bytearray(cipher.encrypt_file(plain))
    fid = bytes(ct[2:18])
    body = bytearray(ct[18:])
    body[CIPHER_BLOCK + 100] ^= 1
    with pytest.raises(BlockAuthError) as info:
        cipher.decrypt_blocks(body, 0, fid)
    assert info.value.block == 1 and "block 1" in str(info.value)
    body[CIPHER_BLOCK:2 * CIPHER_BLOCK] = bytes(CIPHER_BLOCK)  # a hole
    out = cipher.decrypt_blocks(body, 0, fid)
    assert bytes(out) == plain[:PLAIN_BLOCK] + bytes(PLAIN_BLOCK) + plain[2 * PLAIN_BLOCK:]
    with pytest.raises(BlockAuthError):
        cipher.decrypt_blocks(body, 0, fid, strict=True)
    with pytest.raises(BlockAuthError):  # another file's ID
        cipher.decrypt_blocks(ct[18:], 0, os.urandom(16))


@given(st.binary(max_size=2 * CIPHER_BLOCK + 50), st.integers(0, 5))
@settings(max_examples=100, deadline=None)
def test_content_fuzz_only_typed_errors(cipher: ContentCipher, data: bytes, first: int) -> None:
    try:
        cipher.decrypt_blocks(data, first, os.urandom(16), strict=True)
    except CachefsError:
        return
    assert data == b""


def test_symlink_roundtrip_and_tamper(cipher: ContentCipher) -> None:
    stored = encrypt_target(cipher, b"../some/target")
    assert decrypt_target(cipher, stored) == b"../some/target"
    assert encrypt_target(cipher, b"") == "" and decrypt_target(cipher, "") == b""
    tampered = stored[:-2] + ("A" if stored[-2] != "A" else "B") + stored[-1]
    with pytest.raises(CachefsError):
        decrypt_target(cipher, tampered)
    with pytest.raises(VolumeFormatError):
        decrypt_target(cipher, "not/base64")
