"""Deterministic fault injection and per-route request counters (development and tests only).

Client code must survive a misbehaving Trustee: 5xx storms, garbage, oversized bodies, truncated
JWEs, a hung KBS, or a KBS restart that forgets every session. Tests arm a fault for the next
``count`` requests of one route — via :meth:`FaultInjector.inject` or ``POST /__standin__/faults``
— and read :attr:`FaultInjector.counters` to assert how many attempts (retries) the client made.

Fault JSON: ``{"route": ROUTE, "mode": MODE, "count": N, ...}`` with mode-specific members:
``status`` (``"status"``: HTTP code, ``"body"``: JSON value or string), ``garbage``,
``oversized`` (``"size"``: bytes), ``truncate_jwe``, ``hang`` (``"seconds"``), ``drop_sessions``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from agents import jsonutil

ROUTES = frozenset({
    "auth", "attest", "resource", "resources", "admin",
    "as", "certificate", "challenge", "health", "services-health",
})
MODES = frozenset({"status", "garbage", "oversized", "truncate_jwe", "hang", "drop_sessions"})
MAX_OVERSIZED = 256 * 1024 * 1024
MAX_HANG = 3600.0
GARBAGE = b"\x00\xff<html>this is not the JSON you are looking for\x7f"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """One armed fault: applies to the next ``count`` requests of ``route``."""

    route: str
    mode: str
    count: int = 1
    status: int = 500
    body: Any = None
    size: int = 2 * 1024 * 1024
    seconds: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.route, str) or self.route not in ROUTES:
            raise ValueError(f"unknown fault route {self.route!r}; use one of {sorted(ROUTES)}")
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; use one of {sorted(MODES)}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError("fault 'count' must be an integer >= 1")
        if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError("fault 'status' must be an HTTP status code")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not (
            0 <= self.size <= MAX_OVERSIZED
        ):
            raise ValueError(f"fault 'size' must be 0..{MAX_OVERSIZED}")
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float) or not (
            0 <= self.seconds <= MAX_HANG
        ):
            raise ValueError(f"fault 'seconds' must be 0..{MAX_HANG}")

    @classmethod
    def from_json(cls, obj: Any) -> Fault:
        if not isinstance(obj, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = set(obj) - {"route", "mode", "count", "status", "body", "size", "seconds"}
        if unknown:
            raise ValueError(f"unknown fault member(s): {sorted(unknown)}")
        if "route" not in obj or "mode" not in obj:
            raise ValueError("a fault needs 'route' and 'mode'")
        return cls(**obj)


class FaultInjector:
    """Armed faults plus request counters, shared by every route of one stand-in."""

    def __init__(self, drop_sessions: Callable[[], None]) -> None:
        self._faults: list[Fault] = []
        self._drop_sessions = drop_sessions
        self._stopping = asyncio.Event()
        self.counters: Counter[str] = Counter()

    def inject(self, route: str, mode: str, **params: Any) -> Fault:
        """Arm a fault; e.g. ``inject("attest", "status", status=503, count=2)``."""
        fault = Fault(route=route, mode=mode, **params)
        self._faults.append(fault)
        return fault

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    def reset_counters(self) -> None:
        self.counters.clear()

    def pending(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self._faults]

    def stop(self) -> None:
        """End every ``hang`` early (server shutdown)."""
        self._stopping.set()

    def _take(self, route: str) -> Fault | None:
        for fault in self._faults:
            if fault.route == route:
                fault.count -= 1
                if fault.count == 0:
                    self._faults.remove(fault)
                return fault
        return None

    async def run(self, route: str, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request, then apply the next armed fault for ``route`` (if any) around ``handler``."""
        self.counters[route] += 1
        fault = self._take(route)
        if fault is None:
            return await handler(request)
        if fault.mode == "status":
            if fault.body is None or isinstance(fault.body, str):
                return web.Response(status=fault.status, text=fault.body or "")
            return web.json_response(fault.body, status=fault.status)
        if fault.mode == "garbage":
            return web.Response(status=200, body=GARBAGE, content_type="application/json")
        if fault.mode == "oversized":
            return web.Response(status=200, body=_oversized(fault.size), content_type="application/json")
        if fault.mode == "hang":
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=fault.seconds)
            except TimeoutError:
                pass
            return await handler(request)
        if fault.mode == "drop_sessions":
            self._drop_sessions()
            return await handler(request)
        response = await handler(request)  # truncate_jwe
        return _truncate(response)


def _oversized(size: int) -> bytes:
    """A syntactically plausible JSON body of exactly ``size`` bytes (a client must bound its read)."""
    if size < 10:
        return b"A" * size
    return b'{"token":"' + b"A" * (size - 12) + b'"}'


def _truncate(response: web.StreamResponse) -> web.StreamResponse:
    """Cut the JWE ciphertext short (still valid JSON) so only authentication catches it."""
    if not isinstance(response, web.Response) or response.status != 200:
        return response
    if not isinstance(response.body, bytes):
        return response
    try:
        obj = jsonutil.loads(response.body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("ciphertext"), str):
        obj["ciphertext"] = obj["ciphertext"][: max(0, len(obj["ciphertext"]) - 22)]
        body = json.dumps(obj).encode()
    else:
        body = response.body[: len(response.body) // 2]
    truncated = web.Response(status=200, body=body, content_type=response.content_type)
    for name, value in response.headers.items():
        if name.lower() == "set-cookie":
            truncated.headers.add(name, value)
    return truncated
