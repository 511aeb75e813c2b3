"""Chunked Oblivious HTTP as TNG >= 2.2.6 frames it: pure, incremental codecs.

* key configuration (RFC 9458 §3): ``key_id | kem_id | pkR | u16 suites_len | (kdf, aead)...``, the
  list form prefixes each with a u16 length;
* the ``/tng/tunnel`` body: ``u32 BE metadata length | protobuf Metadata | chunked OHTTP request``
  (``Metadata``: 1 ``no_auth``, 2 ``attested_public_key``, 3 ``key_config_hint{1: public_key}``);
* chunked OHTTP (draft-ietf-ohai-chunked-ohttp, martinthomson/ohttp ``stream.rs``): request header
  ``key_id kem kdf aead | enc``, then chunks ``varint(len) | Seal("", pt)`` and a final chunk
  ``varint(0) | Seal("final", pt)`` running to the end of the body; the response starts with a
  random nonce of ``max(Nn, Nk)`` bytes, keys come from ``Export("message/bhttp chunked response")``
  and chunk nonces are the base nonce XOR a chunk counter.

Decoders are fed bytes as they arrive and return complete plaintext pieces; every malformed input
raises ``OhttpError`` (the HTTP layer maps it to 400).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from gateway.hpke import (
    AEAD_KEY_SIZES,
    KDF_HKDF_SHA256,
    KEM_X25519_SHA256,
    NENC,
    NN,
    NT,
    Context,
    HpkeError,
    raw_public,
    setup_base_receiver,
    setup_base_sender,
)

REQUEST_INFO = b"message/bhttp chunked request"
RESPONSE_LABEL = b"message/bhttp chunked response"
MAX_CHUNK_PLAINTEXT = 16384
MAX_METADATA = 32 * 1024 * 1024
HEADER_LEN = 7


class OhttpError(ValueError):
    """Malformed or undecryptable OHTTP input; ``status`` is the HTTP answer TNG gives."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ varints (QUIC, RFC 9000 §16)


def encode_varint(value: int) -> bytes:
    if value < 1 << 6:
        return bytes([value])
    if value < 1 << 14:
        return struct.pack(">H", value | 0x4000)
    if value < 1 << 30:
        return struct.pack(">I", value | 0x80000000)
    if value < 1 << 62:
        return struct.pack(">Q", value | 0xC000000000000000)
    raise ValueError("varint too large")


def decode_varint(buf: bytes | bytearray | memoryview, offset: int) -> tuple[int, int] | None:
    """``(value, new_offset)`` or None when ``buf`` ends inside the varint."""
    if offset >= len(buf):
        return None
    first = buf[offset]
    size = 1 << (first >> 6)
    if offset + size > len(buf):
        return None
    value = first & 0x3F
    for b in buf[offset + 1:offset + size]:
        value = (value << 8) | b
    return value, offset + size


# ------------------------------------------------------------------ key configuration


@dataclass(frozen=True)
class KeyConfig:
    key_id: int
    public_key: bytes
    suites: tuple[tuple[int, int], ...]

    def encode(self) -> bytes:
        suites = b"".join(struct.pack(">HH", kdf, aead) for kdf, aead in self.suites)
        return (bytes([self.key_id]) + struct.pack(">H", KEM_X25519_SHA256) + self.public_key
                + struct.pack(">H", len(suites)) + suites)


def encode_key_config_list(configs: Iterable[KeyConfig]) -> bytes:
    out = b""
    for config in configs:
        encoded = config.encode()
        out += struct.pack(">H", len(encoded)) + encoded
    return out


def decode_key_config_list(data: bytes) -> list[KeyConfig]:
    configs, offset = [], 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise OhttpError("key config list is truncated")
        (length,) = struct.unpack_from(">H", data, offset)
        body = data[offset + 2:offset + 2 + length]
        offset += 2 + length
        if len(body) != length or length < 3 + NENC + 2:
            raise OhttpError("key config is truncated")
        kem = struct.unpack_from(">H", body, 1)[0]
        if kem != KEM_X25519_SHA256:
            raise OhttpError(f"key config KEM {kem:#06x} is not X25519")
        (suites_len,) = struct.unpack_from(">H", body, 3 + NENC)
        suites_raw = body[5 + NENC:]
        if suites_len != len(suites_raw) or suites_len % 4 or not suites_len:
            raise OhttpError("key config suites length is wrong")
        suites = tuple(struct.unpack_from(">HH", suites_raw, i) for i in range(0, suites_len, 4))
        configs.append(KeyConfig(body[0], bytes(body[3:3 + NENC]), suites))
    return configs


# ------------------------------------------------------------------ /tng/tunnel metadata (protobuf)


@dataclass(frozen=True)
class Metadata:
    no_auth: bool
    attested: bool
    hint_public_key: bytes | None


def _pb_fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    fields, offset = [], 0
    while offset < len(data):
        key = _pb_varint(data, offset)
        tag, offset = key
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, offset = _pb_varint(data, offset)
            fields.append((number, wire, value))
        elif wire == 2:
            length, offset = _pb_varint(data, offset)
            if offset + length > len(data):
                raise OhttpError("tunnel metadata: field runs past its end")
            fields.append((number, wire, data[offset:offset + length]))
            offset += length
        elif wire in (1, 5):
            offset += 8 if wire == 1 else 4
            if offset > len(data):
                raise OhttpError("tunnel metadata: field runs past its end")
        else:
            raise OhttpError(f"tunnel metadata: unsupported protobuf wire type {wire}")
    return fields


def _pb_varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if offset >= len(data) or shift > 63:
            raise OhttpError("tunnel metadata: malformed protobuf varint")
        b = data[offset]
        offset += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, offset


def decode_metadata(data: bytes) -> Metadata:
    no_auth = attested = False
    hint = None
    for number, wire, value in _pb_fields(data):
        if wire != 2:
            continue
        assert isinstance(value, bytes)
        if number == 1:
            no_auth = True
        elif number == 2:
            attested = True
        elif number == 3:
            for inner_number, inner_wire, inner in _pb_fields(value):
                if inner_number == 1 and inner_wire == 2:
                    assert isinstance(inner, bytes)
                    hint = inner
    return Metadata(no_auth=no_auth, attested=attested, hint_public_key=hint)


def encode_metadata(public_key: bytes) -> bytes:
    """NoAuth metadata with the key hint, as tng's ingress sends it (``0a00 1a22 0a20 <pk>``)."""
    hint = b"\x0a" + bytes([len(public_key)]) + public_key
    return b"\x0a\x00" + b"\x1a" + bytes([len(hint)]) + hint


# ------------------------------------------------------------------ chunk framing


class _ChunkReader:
    """Splits ``varint(len) | ct`` chunks; a zero length starts the final chunk (to end of input)."""

    def __init__(self, max_ct: int) -> None:
        self.buf = bytearray()
        self.final = False
        self.max_ct = max_ct

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while not self.final:
            parsed = decode_varint(self.buf, 0)
            if parsed is None:
                break
            length, offset = parsed
            if length == 0:
                del self.buf[:offset]
                self.final = True
                break
            if length > self.max_ct:
                raise OhttpError(f"OHTTP chunk of {length} bytes exceeds the limit")
            if len(self.buf) < offset + length:
                break
            out.append(bytes(self.buf[offset:offset + length]))
            del self.buf[:offset + length]
        if self.final and len(self.buf) > self.max_ct:
            raise OhttpError("final OHTTP chunk exceeds the limit")
        return out


class RequestDecoder:
    """Server side of a chunked request: feed body bytes, get plaintext pieces."""

    def __init__(self, keys: dict[int, x25519.X25519PrivateKey]) -> None:
        self._keys = keys
        self._head = bytearray()
        self.context: Context | None = None
        self.enc = b""
        self.aead_id = 0
        self._chunks = _ChunkReader(MAX_CHUNK_PLAINTEXT + NT)
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.context is None:
            self._head += data
            if len(self._head) < HEADER_LEN + NENC:
                return []
            key_id = self._head[0]
            kem, kdf, aead = struct.unpack_from(">HHH", self._head, 1)
            if key_id not in self._keys:
                raise OhttpError(f"unknown OHTTP key id {key_id}; fetch the key config again", status=422)
            if kem != KEM_X25519_SHA256 or kdf != KDF_HKDF_SHA256 or aead not in AEAD_KEY_SIZES:
                raise OhttpError("unsupported OHTTP suite")
            header = bytes(self._head[:HEADER_LEN])
            self.enc = bytes(self._head[HEADER_LEN:HEADER_LEN + NENC])
            try:
                self.context = setup_base_receiver(self.enc, self._keys[key_id], REQUEST_INFO + b"\0" + header,
                                                   kdf, aead)
            except HpkeError as exc:
                raise OhttpError(str(exc)) from None
            self.aead_id = aead
            data = bytes(self._head[HEADER_LEN + NENC:])
            self._head.clear()
        out = []
        try:
            for ct in self._chunks.feed(data):
                out.append(self.context.open(b"", ct))
        except HpkeError:
            raise OhttpError("OHTTP request chunk does not decrypt") from None
        return out

    def finish(self) -> bytes:
        """The final chunk's plaintext, once the body has ended."""
        if self.context is None or not self._chunks.final:
            raise OhttpError("OHTTP request ended without its final chunk")
        try:
            pt = self.context.open(b"final", bytes(self._chunks.buf))
        except HpkeError:
            raise OhttpError("final OHTTP request chunk does not decrypt (truncated?)") from None
        self.done = True
        return pt


def _response_aead(context: Context, enc: bytes, response_nonce: bytes) -> tuple[AESGCM | ChaCha20Poly1305, bytes]:
    nk = AEAD_KEY_SIZES[context.aead_id]
    secret = context.export(RESPONSE_LABEL, max(NN, nk))
    prk = hmac.new(enc + response_nonce, secret, hashlib.sha256).digest()
    key = _hkdf_expand(prk, b"key", nk)
    nonce = _hkdf_expand(prk, b"nonce", NN)
    cipher = ChaCha20Poly1305(key) if len(key) == 32 and context.aead_id == 3 else AESGCM(key)
    return cipher, nonce


def _hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _xor_counter(nonce: bytes, counter: int) -> bytes:
    return bytes(a ^ b for a, b in zip(nonce, counter.to_bytes(NN, "big"), strict=True))


class ResponseEncoder:
    """Server side of a chunked response: ``start()`` then ``chunk(pt)``... and ``final(pt)``."""

    def __init__(self, request: RequestDecoder) -> None:
        if request.context is None:
            raise OhttpError("response before the request header")
        self.nonce = os.urandom(max(NN, AEAD_KEY_SIZES[request.aead_id]))
        self._cipher, self._base = _response_aead(request.context, request.enc, self.nonce)
        self._counter = 0

    def start(self) -> bytes:
        return self.nonce

    def _seal(self, aad: bytes, plaintext: bytes) -> bytes:
        ct = self._cipher.encrypt(_xor_counter(self._base, self._counter), plaintext, aad)
        self._counter += 1
        return ct

    def chunk(self, plaintext: bytes) -> bytes:
        out = b""
        for i in range(0, len(plaintext), MAX_CHUNK_PLAINTEXT):
            ct = self._seal(b"", plaintext[i:i + MAX_CHUNK_PLAINTEXT])
            out += encode_varint(len(ct)) + ct
        return out

    def final(self, plaintext: bytes = b"") -> bytes:
        return encode_varint(0) + self._seal(b"final", plaintext)


# ------------------------------------------------------------------ client side (our tests and clients)


class ClientRequest:
    """Client side: ``header()``, ``chunk(pt)``..., ``final(pt)``; then a ``ResponseDecoder``."""

    def __init__(self, config: KeyConfig, aead_id: int | None = None) -> None:
        kdf, aead = next(((k, a) for k, a in config.suites if aead_id in (None, a)), (None, None))
        if kdf is None or aead is None:
            raise OhttpError("key config offers no usable suite")
        self.header_bytes = bytes([config.key_id]) + struct.pack(">HHH", KEM_X25519_SHA256, kdf, aead)
        self.enc, self.context = setup_base_sender(config.public_key, REQUEST_INFO + b"\0" + self.header_bytes,
                                                   kdf, aead)

    def header(self) -> bytes:
        return self.header_bytes + self.enc

    def chunk(self, plaintext: bytes) -> bytes:
        out = b""
        for i in range(0, len(plaintext), MAX_CHUNK_PLAINTEXT):
            ct = self.context.seal(b"", plaintext[i:i + MAX_CHUNK_PLAINTEXT])
            out += encode_varint(len(ct)) + ct
        return out

    def final(self, plaintext: bytes = b"") -> bytes:
        return encode_varint(0) + self.context.seal(b"final", plaintext)


class ResponseDecoder:
    def __init__(self, request: ClientRequest) -> None:
        self._request = request
        self._nonce_len = max(NN, AEAD_KEY_SIZES[request.context.aead_id])
        self._head = bytearray()
        self._cipher: AESGCM | ChaCha20Poly1305 | None = None
        self._base = b""
        self._counter = 0
        self._chunks = _ChunkReader(MAX_CHUNK_PLAINTEXT + NT)

    def _open(self, aad: bytes, ct: bytes) -> bytes:
        assert self._cipher is not None
        try:
            pt = self._cipher.decrypt(_xor_counter(self._base, self._counter), ct, aad)
        except InvalidTag:
            raise OhttpError("OHTTP response chunk does not decrypt") from None
        self._counter += 1
        return pt

    def feed(self, data: bytes) -> list[bytes]:
        if self._cipher is None:
            self._head += data
            if len(self._head) < self._nonce_len:
                return []
            nonce = bytes(self._head[:self._nonce_len])
            self._cipher, self._base = _response_aead(self._request.context, self._request.enc, nonce)
            data = bytes(self._head[self._nonce_len:])
        return [self._open(b"", ct) for ct in self._chunks.feed(data)]

    def finish(self) -> bytes:
        if self._cipher is None or not self._chunks.final:
            raise OhttpError("OHTTP response ended without its final chunk")
        return self._open(b"final", bytes(self._chunks.buf))


def new_key_config(key_id: int, suites: tuple[tuple[int, int], ...]) -> tuple[KeyConfig, x25519.X25519PrivateKey]:
    private = x25519.X25519PrivateKey.generate()
    return KeyConfig(key_id, raw_public(private), suites), private
