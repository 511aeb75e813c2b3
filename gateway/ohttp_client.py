"""OHTTP client of the ingress (what a TNG >= 2.2.6 ingress does with ``ohttp``/``encap_in_http``).

Before the first request to an egress the client gets a challenge from the attestation service,
asks the egress for its key configuration attested for that challenge, sends the returned evidence
to the AS and checks the token: its runtime data must contain ``{challenge_token, hpke_key_config}``
exactly as received, which binds the HPKE public key to the TEE and the verdict to this request for
a fresh challenge. Only then is any request encrypted to that key. The verified key configuration
is cached until the earlier of its ``expire_timestamp`` and the token's ``exp``; a 422 from the
tunnel (rotated key) drops it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from agents import jsonutil
from gateway import bhttp
from gateway.as_protocol import record_from_json_evidence
from gateway.errors import CertFormatError, GatewayError, VerificationFailed
from gateway.ohttp import (
    ClientRequest,
    KeyConfig,
    OhttpError,
    ResponseDecoder,
    decode_key_config_list,
    encode_metadata,
)
from gateway.token_verify import verify_token
from gateway.verifier import PeerVerifier

API_HEADER = "x-tng-ohttp-api"
MAX_KEY_CONFIG = 8 * 1024 * 1024


@dataclass(frozen=True)
class VerifiedKey:
    config: KeyConfig
    valid_until: float


class OhttpClient:
    def __init__(self, verifier: PeerVerifier | None, *, clock: Callable[[], float] = time.time) -> None:
        self.verifier = verifier
        self.clock = clock
        self._keys: dict[str, VerifiedKey] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=True,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=15))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _challenge(self) -> str:
        assert self.verifier is not None
        status, body = await self.verifier.as_client._request("POST", "/challenge", {})
        if status == 404:
            return "dummy nonce"  # an AS without /challenge (TNG does the same)
        try:

            obj = jsonutil.loads(body)
            extra = obj.get("extra-params") or obj.get("extra_params")
            if isinstance(extra, dict) and isinstance(extra.get("jwt"), str):
                return str(extra["jwt"])
            return str(obj["nonce"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise VerificationFailed(f"attestation service challenge answer is malformed ({status})") from None

    async def key_config(self, target: str) -> KeyConfig:
        cached = self._keys.get(target)
        if cached is not None and self.clock() < cached.valid_until:
            return cached.config
        async with self._locks.setdefault(target, asyncio.Lock()):
            cached = self._keys.get(target)
            if cached is not None and self.clock() < cached.valid_until:
                return cached.config
            verified = await self._fetch_key_config(target)
            self._keys[target] = verified
            return verified.config

    async def _fetch_key_config(self, target: str) -> VerifiedKey:
        challenge = await self._challenge() if self.verifier is not None else None
        request: Any = {"model": "background_check", "challenge_token": challenge} if challenge else None
        try:
            async with self._http().post(f"http://{target}/", json={"attestation_request": request},
                                         headers={API_HEADER: "/tng/key-config"}) as resp:
                raw = await resp.content.read(MAX_KEY_CONFIG + 1)
                if resp.status != 200:
                    raise GatewayError(f"egress {target} answered {resp.status} to the key-config request: "
                                       f"{raw[:200].decode('utf-8', 'replace')}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise GatewayError(f"cannot reach the OHTTP egress {target}: {type(exc).__name__}") from None

        try:
            obj = jsonutil.loads(raw)
            hpke_key_config = obj["hpke_key_config"]
            expire = float(hpke_key_config["expire_timestamp"])
            configs = decode_key_config_list(base64.b64decode(hpke_key_config["encoded_key_config_list"]))
            info = obj.get("attestation_info")
        except (ValueError, KeyError, TypeError, OhttpError):
            raise VerificationFailed(f"egress {target} key-config answer is malformed") from None
        if not configs:
            raise VerificationFailed(f"egress {target} offered no HPKE key")
        valid_until = expire
        if self.verifier is not None:
            if not isinstance(info, dict) or info.get("model") != "background_check":
                raise VerificationFailed(f"egress {target} key config carries no attestation (is the egress "
                                         "configured with 'attest'?)")
            try:
                record = record_from_json_evidence(info.get("evidence"))
            except CertFormatError as exc:
                raise VerificationFailed(f"egress {target} key-config evidence: {exc}") from None
            userdata = {"challenge_token": challenge, "hpke_key_config": hpke_key_config}
            runtime = record.runtime_data_object()
            if any(runtime.get(k) != v for k, v in userdata.items()):
                raise VerificationFailed(f"egress {target} evidence is not bound to this key config and challenge")
            token = await self.verifier.as_client.attest(record, self.verifier.verify.policy_ids)
            self.verifier.as_calls += 1
            verdict = verify_token(token, anchors=await self.verifier.anchors(),
                                   policy_ids=self.verifier.verify.policy_ids, expected_runtime_data=userdata,
                                   now=self.clock(), leeway=self.verifier.leeway)
            valid_until = min(expire, verdict.exp)
        return VerifiedKey(configs[0], valid_until)

    async def request(self, target: str, inner: bhttp.Request) -> AsyncIterator[bytes | tuple[int, list[tuple[str,
                                                                                                         str]]]]:
        """Send ``inner`` through the tunnel; yields ``(status, headers)`` once, then body pieces."""
        config = await self.key_config(target)
        client = ClientRequest(config)
        meta = encode_metadata(config.public_key)
        body = (len(meta).to_bytes(4, "big") + meta + client.header() + client.chunk(bhttp.encode_request(inner))
                + client.final(b""))
        decoder = ResponseDecoder(client)
        try:
            async with self._http().post(f"http://{target}/", data=body,
                                         headers={API_HEADER: "/tng/tunnel",
                                                  "content-type": "message/ohttp-chunked-req"}) as resp:
                if resp.status == 422:
                    self._keys.pop(target, None)
                if resp.status != 200:
                    text = (await resp.content.read(2000)).decode("utf-8", "replace")
                    raise GatewayError(f"egress {target} refused the tunnel ({resp.status}): {text[:300]}")
                parser = _ResponseParser()
                async for data in resp.content.iter_any():
                    for piece in decoder.feed(data):
                        for item in parser.feed(piece):
                            yield item
                for item in parser.feed(decoder.finish()):
                    yield item
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(f"OHTTP tunnel to {target} failed: {type(exc).__name__}") from None
        except OhttpError as exc:
            raise GatewayError(f"OHTTP tunnel to {target}: {exc}") from None


class _ResponseParser:
    """Incremental parse of an indeterminate-length BHTTP response (what our and tng's egress send)."""

    def __init__(self) -> None:
        self.buf = b""
        self.head_done = False
        self.done = False

    def feed(self, data: bytes) -> list[bytes | tuple[int, list[tuple[str, str]]]]:
        from gateway.ohttp import decode_varint

        self.buf += data
        out: list[bytes | tuple[int, list[tuple[str, str]]]] = []
        if not self.head_done:
            try:
                head = _parse_head(self.buf)
            except _NeedMore:
                return out
            (status, headers), used = head
            self.buf = self.buf[used:]
            self.head_done = True
            out.append((status, headers))
        while not self.done:
            parsed = decode_varint(self.buf, 0)
            if parsed is None:
                break
            length, offset = parsed
            if length == 0:
                self.done = True
                break
            if len(self.buf) < offset + length:
                break
            out.append(self.buf[offset:offset + length])
            self.buf = self.buf[offset + length:]
        return out


class _NeedMore(Exception):
    pass


def _parse_head(buf: bytes) -> tuple[tuple[int, list[tuple[str, str]]], int]:
    from gateway.ohttp import decode_varint

    def varint(pos: int) -> tuple[int, int]:
        parsed = decode_varint(buf, pos)
        if parsed is None:
            raise _NeedMore
        return parsed

    indicator, pos = varint(0)
    if indicator != 3:
        raise GatewayError(f"egress answered a Binary HTTP framing {indicator}, expected 3 (indeterminate)")
    while True:
        status, pos = varint(pos)
        headers = []
        while True:
            n, pos = varint(pos)
            if n == 0:
                break
            if len(buf) < pos + n:
                raise _NeedMore
            name = buf[pos:pos + n].decode("latin-1")
            pos += n
            m, pos = varint(pos)
            if len(buf) < pos + m:
                raise _NeedMore
            headers.append((name, buf[pos:pos + m].decode("latin-1")))
            pos += m
        if status >= 200:
            return (status, headers), pos
