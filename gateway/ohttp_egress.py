"""OHTTP egress (TNG >= 2.2.6 ``ohttp`` / ``decap_from_http``): an aiohttp server in front of the app.

Routing is by header ``x-tng-ohttp-api``: ``/tng/key-config`` hands out the current HPKE key
configuration, attested for the client's AS challenge (userdata ``{challenge_token, hpke_key_config}``
canonical JSON → SHA-384 → report data); ``/tng/tunnel`` decrypts a chunked OHTTP request, forwards
the Binary HTTP request to the backend and streams the backend's answer back chunk by chunk, so
server-sent events are not buffered. Requests without the header get 403 ``RejectNonTngRequest``
unless a ``direct_forward`` path regex matches (then they are proxied in plaintext, e.g. probes).
Keys are self-generated X25519, rotated every ``rotation_interval`` (default 300 s) and accepted
for twice that long.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import x25519

from agents import jsonutil
from agents.logsetup import get_logger
from attestation_agent.kbs.canonical import canonical_json, runtime_data_digest
from gateway import bhttp
from gateway.attester import EvidenceProvider
from gateway.config import EgressConfig
from gateway.errors import GatewayError
from gateway.hpke import AEAD_AES_128_GCM, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, KDF_HKDF_SHA256
from gateway.metrics import GatewayMetrics, Listener
from gateway.ohttp import (
    KeyConfig,
    OhttpError,
    RequestDecoder,
    ResponseEncoder,
    decode_metadata,
    encode_key_config_list,
    new_key_config,
)

log = get_logger("gateway.ohttp")

API_HEADER = "x-tng-ohttp-api"
SUITES = ((KDF_HKDF_SHA256, AEAD_AES_128_GCM), (KDF_HKDF_SHA256, AEAD_AES_256_GCM),
          (KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305))
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "content-length", "host"}
MAX_KEY_CONFIG_BODY = 64 * 1024
MAX_REQUEST_PLAINTEXT = 64 * 1024 * 1024


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


@dataclass
class _Key:
    config: KeyConfig
    private: x25519.X25519PrivateKey
    created: float


class KeyRing:
    """Self-generated keys: a new one when the newest is older than ``rotation``; kept for 2x."""

    def __init__(self, rotation: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self.rotation = rotation
        self.clock = clock
        self._keys: dict[int, _Key] = {}
        self._next_id = 0

    def current(self) -> _Key:
        now = self.clock()
        self._keys = {k: v for k, v in self._keys.items() if now - v.created < 2 * self.rotation}
        newest = max(self._keys.values(), key=lambda k: k.created, default=None)
        if newest is None or now - newest.created >= self.rotation:
            key_id = self._next_id
            self._next_id = (self._next_id + 1) % 256
            config, private = new_key_config(key_id, SUITES)
            newest = _Key(config, private, now)
            self._keys[key_id] = newest
        return newest

    def privates(self) -> dict[int, x25519.X25519PrivateKey]:
        now = self.clock()
        return {k: v.private for k, v in self._keys.items() if now - v.created < 2 * self.rotation}

    def public_keys(self) -> set[bytes]:
        return {v.config.public_key for v in self._keys.values()}

    def expire_timestamp(self, key: _Key) -> int:
        return int(key.created + self.rotation)


class OhttpEgress:
    """The aiohttp application of one OHTTP ``add_egress`` entry."""

    def __init__(self, config: EgressConfig, provider: EvidenceProvider | None, metrics: GatewayMetrics,
                 backend: str, *, keys: KeyRing | None = None) -> None:
        rotation = float(config.security.ohttp.key.get("rotation_interval", 300)) if config.security.ohttp else 300
        source = config.security.ohttp.key.get("source", "self_generated") if config.security.ohttp else ""
        if source != "self_generated":
            raise GatewayError(f"add_egress[{config.id}].ohttp.key.source {source!r} is not supported",
                               hint="use 'self_generated'")
        self.config = config
        self.provider = provider
        self.backend = backend  # "host:port"
        self.keys = keys or KeyRing(rotation)
        self.direct = [re.compile(p) for p in config.direct_forward]
        self.metrics = metrics
        self.listener: Listener | None = None
        self._session: aiohttp.ClientSession | None = None

    def app(self, listen: str) -> web.Application:
        self.listener = self.metrics.listener("egress", "ohttp", self.config.id, listen)
        app = web.Application(client_max_size=MAX_REQUEST_PLAINTEXT)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False,
                                                  timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        assert self.listener is not None
        self.listener.cx_total.inc()
        self.listener.cx_active.inc()
        try:
            api = request.headers.get(API_HEADER)
            if api == "/tng/key-config" and request.method == "POST":
                return await self.key_config(request)
            if api == "/tng/tunnel" and request.method == "POST":
                return await self.tunnel(request)
            if api is None and any(p.fullmatch(request.path) for p in self.direct):
                return await self.direct_forward(request)
            self.listener.cx_failed.inc()
            log.warning("gateway.peer.rejected", side="egress", id=self.config.id, peer=request.remote,
                        reason=f"not a TNG OHTTP request (path {request.path[:100]!r}, api {str(api)[:40]!r})")
            return _error(403, "RejectNonTngRequest", "Access to this service requires a TNG-secured connection; "
                          "send the request through a TNG ingress (or a cai gateway ingress)")
        except OhttpError as exc:
            self.listener.cx_failed.inc()
            log.warning("gateway.peer.rejected", side="egress", id=self.config.id, peer=request.remote,
                        reason=str(exc))
            return _error(exc.status, "InvalidRequest" if exc.status != 422 else "UnknownKey", str(exc))
        finally:
            self.listener.cx_active.dec()

    async def key_config(self, request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_KEY_CONFIG_BODY + 1)
        if len(raw) > MAX_KEY_CONFIG_BODY:
            raise OhttpError("key-config request is too large", 413)
        try:
            body = jsonutil.loads(raw or b"{}")
            attestation_request = body.get("attestation_request") if isinstance(body, dict) else None
        except ValueError:
            raise OhttpError("key-config request body is not JSON") from None
        key = self.keys.current()
        hpke_key_config = {"expire_timestamp": self.keys.expire_timestamp(key),
                           "encoded_key_config_list": base64.b64encode(
                               encode_key_config_list([key.config])).decode("ascii")}
        info: Any = None
        if isinstance(attestation_request, dict) and self.provider is not None:
            model = attestation_request.get("model")
            if model != "background_check":
                raise OhttpError(f"attestation model {str(model)[:40]!r} is not supported; use background_check")
            userdata: dict[str, Any] = {"challenge_token": attestation_request.get("challenge_token"),
                                        "hpke_key_config": hpke_key_config}
            if not isinstance(userdata["challenge_token"], str):
                raise OhttpError("background_check needs a challenge_token string")
            runtime = canonical_json(userdata).decode("utf-8")
            evidence = await self.provider.evidence(runtime_data_digest(userdata, "sha384"))
            info = {"model": "background_check", "aa_provider": "coco", "evidence": {
                "aa_tee_type": await self.provider.tee_type(),
                "aa_evidence": base64.b64encode(evidence).decode("ascii"),
                "aa_runtime_data": runtime,
                "aa_runtime_data_hash_algo": "sha384"}}
        return web.json_response({"hpke_key_config": hpke_key_config, "attestation_info": info},
                                 headers={"access-control-allow-origin": "*"})

    async def tunnel(self, request: web.Request) -> web.StreamResponse:
        assert self.listener is not None
        head = await request.content.readexactly(4) if request.content_length != 0 else b""
        if len(head) != 4:
            raise OhttpError("tunnel body lacks the metadata length")
        meta_len = int.from_bytes(head, "big")
        if meta_len > 1024 * 1024:
            raise OhttpError("tunnel metadata is too large", 413)
        metadata = decode_metadata(await request.content.readexactly(meta_len))
        if metadata.attested:
            raise OhttpError("client attestation (HPKE auth mode) is not supported by this egress", 403)
        if metadata.hint_public_key is not None and metadata.hint_public_key not in self.keys.public_keys():
            raise OhttpError("the key named by key_config_hint is unknown or rotated; fetch the key config again",
                             422)
        decoder = RequestDecoder(self.keys.privates())
        parts, total = [], 0
        async for data in request.content.iter_any():
            self.listener.rx_bytes.inc(len(data))
            for piece in decoder.feed(data):
                total += len(piece)
                if total > MAX_REQUEST_PLAINTEXT:
                    raise OhttpError("tunnelled request is too large", 413)
                parts.append(piece)
        parts.append(decoder.finish())
        try:
            inner = bhttp.decode_request(b"".join(parts))
        except bhttp.BhttpError as exc:
            raise OhttpError(f"tunnelled request is not valid Binary HTTP: {exc}") from None
        encoder = ResponseEncoder(decoder)
        headers = [(k, v) for k, v in inner.headers if k not in HOP_BY_HOP]
        if inner.authority:
            headers.append(("host", inner.authority))
        try:
            upstream = await self._http().request(inner.method, f"http://{self.backend}{inner.path}",
                                                  headers=headers, data=inner.body or None,
                                                  allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            log.error("gateway.ohttp.backend_unreachable", backend=self.backend, error=type(exc).__name__)
            return _error(502, "UpstreamUnavailable", f"backend {self.backend} is unreachable")
        out = web.StreamResponse(status=200, headers={"content-type": "message/ohttp-chunked-res",
                                                      "cache-control": "no-store"})
        await out.prepare(request)
        async with upstream:
            resp_headers = [(k.lower(), v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
            first = encoder.start() + encoder.chunk(bhttp.response_head(upstream.status, resp_headers))
            await out.write(first)
            async for data in upstream.content.iter_any():
                frame = encoder.chunk(bhttp.response_chunk(data))
                self.listener.tx_bytes.inc(len(frame))
                await out.write(frame)
        # Like tng's own egress: the BHTTP terminators travel in a normal chunk and the final chunk
        # is empty (tng 2.12's client cannot open a final chunk that carries data).
        await out.write(encoder.chunk(bhttp.response_end()) + encoder.final(b""))
        await out.write_eof()
        return out

    async def direct_forward(self, request: web.Request) -> web.StreamResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        async with self._http().request(request.method, f"http://{self.backend}{request.path_qs}", headers=headers,
                                        data=await request.read() or None, allow_redirects=False) as upstream:
            out = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP})
            await out.prepare(request)
            async for data in upstream.content.iter_any():
                await out.write(data)
            await out.write_eof()
            return out
