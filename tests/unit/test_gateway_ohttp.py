"""HPKE against RFC 9180 A.1.1, OHTTP key configs against tng 2.12's wire bytes, chunked OHTTP and
Binary HTTP round trips, and fuzzing of every decoder (only OhttpError/BhttpError may escape)."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import bhttp
from gateway.hpke import AEAD_AES_128_GCM, KDF_HKDF_SHA256, HpkeError, setup_base_receiver, setup_base_sender
from gateway.ohttp import (
    ClientRequest,
    KeyConfig,
    OhttpError,
    RequestDecoder,
    ResponseDecoder,
    ResponseEncoder,
    decode_key_config_list,
    decode_metadata,
    decode_varint,
    encode_key_config_list,
    encode_metadata,
    encode_varint,
    new_key_config,
)

# RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode
SK_EM = bytes.fromhex("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736")
SK_RM = bytes.fromhex("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
PK_RM = bytes.fromhex("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d")
ENC = bytes.fromhex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
INFO = bytes.fromhex("4f6465206f6e2061204772656369616e2055726e")
PT = bytes.fromhex("4265617574792069732074727574682c20747275746820626561757479")


def test_hpke_rfc9180_a11():
    enc, sender = setup_base_sender(PK_RM, INFO, KDF_HKDF_SHA256, AEAD_AES_128_GCM,
                                    ephemeral=x25519.X25519PrivateKey.from_private_bytes(SK_EM))
    assert enc == ENC
    assert sender.key.hex() == "4531685d41d65f03dc48f6b8302c05b0"
    assert sender.base_nonce.hex() == "56d890e5accaaf011cff4b7d"
    assert sender.exporter_secret.hex() == "45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8"
    assert sender.seal(b"Count-0", PT).hex() == ("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9"
                                                 "6d8770ac83d07bea87e13c512a")
    assert sender.seal(b"Count-1", PT).hex() == ("af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab25"
                                                 "1c03d0c22a56b8ca42c2063b84")
    receiver = setup_base_receiver(ENC, x25519.X25519PrivateKey.from_private_bytes(SK_RM), INFO,
                                   KDF_HKDF_SHA256, AEAD_AES_128_GCM)
    assert receiver.export(b"", 32).hex() == "3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee"
    assert receiver.export(b"TestContext", 32).hex() == (
        "e9e43065102c3836401bed8c3c3c75ae46be1639869391d62c61f1ec7af54931")
    assert receiver.open(b"Count-0", bytes.fromhex(
        "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a")) == PT
    with pytest.raises(HpkeError):
        receiver.open(b"Count-0", b"\0" * 45)


def test_key_config_matches_tng_2_12_wire():
    pk = bytes(range(32))
    # observed from tng 2.12.0: 00 2d | 00 0020 <pk32> 0008 0001 0001 0001 0003
    wire = bytes.fromhex("002d" + "00" + "0020") + pk + bytes.fromhex("0008" + "00010001" + "00010003")
    assert encode_key_config_list([KeyConfig(0, pk, ((1, 1), (1, 3)))]) == wire
    assert decode_key_config_list(wire) == [KeyConfig(0, pk, ((1, 1), (1, 3)))]


def test_metadata_matches_tng_2_12_wire():
    pk = bytes(range(32))
    wire = bytes.fromhex("0a001a220a20") + pk  # observed no-RA metadata (after the u32 length 0x26)
    assert encode_metadata(pk) == wire and len(wire) == 0x26
    meta = decode_metadata(wire)
    assert meta.no_auth and not meta.attested and meta.hint_public_key == pk


@pytest.mark.parametrize("aead", [1, 2, 3])
def test_chunked_round_trip(aead):
    config, private = new_key_config(7, ((1, 1), (1, 2), (1, 3)))
    client = ClientRequest(config, aead_id=aead)
    message = bhttp.encode_request(bhttp.Request("POST", "http", "svc:8080", "/v1/chat", [("a", "b")],
                                                 b"x" * 40000))
    wire = client.header() + client.chunk(message[:20000]) + client.chunk(message[20000:]) + client.final(b"")
    server = RequestDecoder({7: private})
    pieces = []
    for i in range(0, len(wire), 777):  # arbitrary network splits
        pieces += server.feed(wire[i:i + 777])
    pieces.append(server.finish())
    request = bhttp.decode_request(b"".join(pieces))
    assert request.body == b"x" * 40000 and request.headers == [("a", "b")] and request.authority == "svc:8080"
    encoder = ResponseEncoder(server)
    body = (encoder.start() + encoder.chunk(bhttp.response_head(200, [("content-type", "text/event-stream")]))
            + encoder.chunk(bhttp.response_chunk(b"data: 1\n\n")) + encoder.chunk(bhttp.response_chunk(b"y" * 20000))
            + encoder.chunk(bhttp.response_end()) + encoder.final(b""))
    decoder = ResponseDecoder(client)
    out = []
    for i in range(0, len(body), 333):
        out += decoder.feed(body[i:i + 333])
    out.append(decoder.finish())
    response = bhttp.decode_response(b"".join(out))
    assert response.status == 200 and response.body == b"data: 1\n\n" + b"y" * 20000


def test_unknown_key_id_is_422_and_tampering_fails():
    config, private = new_key_config(1, ((1, 1),))
    client = ClientRequest(config)
    with pytest.raises(OhttpError) as info:
        RequestDecoder({2: private}).feed(client.header())
    assert info.value.status == 422
    wire = bytearray(client.header() + client.chunk(b"hello") + client.final(b"end"))
    wire[-3] ^= 1
    server = RequestDecoder({1: private})
    server.feed(bytes(wire))
    with pytest.raises(OhttpError, match="final"):
        server.finish()


def test_bhttp_indeterminate_request_and_varints():
    req = bhttp.Request("GET", "https", "example.com", "/hello.txt", [("user-agent", "curl")], b"")
    assert bhttp.decode_request(bhttp.encode_request(req, known_length=False)).headers == [("user-agent", "curl")]
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        assert decode_varint(encode_varint(value), 0) == (value, len(encode_varint(value)))
    # RFC 9000 §A.1 examples
    assert decode_varint(bytes.fromhex("c2197c5eff14e88c"), 0) == (151288809941952652, 8)
    assert decode_varint(bytes.fromhex("9d7f3e7d"), 0) == (494878333, 4)
    assert decode_varint(bytes.fromhex("7bbd"), 0) == (15293, 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoders(data):
    for fn in (bhttp.decode_request, bhttp.decode_response):
        try:
            fn(data)
        except bhttp.BhttpError:
            pass
    for fn2 in (decode_key_config_list, decode_metadata):
        try:
            fn2(data)
        except OhttpError:
            pass
    server = RequestDecoder({0: x25519.X25519PrivateKey.generate()})
    try:
        server.feed(b"\x00" + struct.pack(">HHH", 0x20, 1, 1) + data)
        server.finish()
    except OhttpError:
        pass
