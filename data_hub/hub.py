"""The data hub service: materialise every configured resource, keep it fresh, answer API reads.

Start-up: one task per resource fetches it (all concurrently; resources at one Trustee share its
session) and retries with capped backoff until it succeeds — a Trustee that is down only delays
readiness, it never makes the daemon exit. Ready = every *required* resource is on disk.
Refresh: every ``refresh_interval`` all resources are fetched again; a changed value replaces its
file atomically; a failure keeps the last good value and is reported (status, metrics), not fatal.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.errors import CaiError
from agents.health import HealthState, Metrics
from agents.logsetup import get_logger
from agents.retry import Backoff
from data_hub.errors import ResourceUnavailableError
from data_hub.resource_map import ResourceEntry
from data_hub.store import ResourceStore
from data_hub.uri import ResourceUri

log = get_logger("cdh")

FetchFn = Callable[[str, ResourceUri], Awaitable[bytes]]


@dataclass
class ResourceState:
    """What is known about one resource — never its value."""

    entry: ResourceEntry
    present: bool = False
    attempts: int = 0
    last_fetch: float | None = None  # wall time of the last attempt
    last_success: float | None = None
    last_change: float | None = None
    last_error: str | None = None  # latest start-up failure (cleared on success)
    last_refresh_error: str | None = None  # latest refresh failure (cleared by a good refresh)
    refreshes: int = 0
    changes: int = 0

    def describe(self) -> dict[str, Any]:
        return {**self.entry.describe(), "present": self.present, "attempts": self.attempts,
                "last_fetch": self.last_fetch, "last_success": self.last_success, "last_change": self.last_change,
                "last_error": self.last_error, "last_refresh_error": self.last_refresh_error,
                "refreshes": self.refreshes, "changes": self.changes}


@dataclass
class HubOptions:
    refresh_interval: float = 0.0  # 0: no refresh
    startup_backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0, attempts=sys.maxsize))
    attempt_timeout: float = 90.0


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, CaiError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}"  # unexpected: type only, the message could quote anything


class DataHub:
    """Resource states, the store, and the fetch function (normally ``TrusteePool.fetch``)."""

    def __init__(self, entries: Sequence[ResourceEntry], store: ResourceStore, fetch: FetchFn, *,
                 options: HubOptions | None = None, health: HealthState | None = None,
                 metrics: Metrics | None = None) -> None:
        self.entries = tuple(entries)
        self.store = store
        self._fetch = fetch
        self.options = options or HubOptions()
        self.health = health or HealthState()
        self.metrics = metrics or Metrics()
        self.states = {entry.file: ResourceState(entry) for entry in self.entries}
        self._values: dict[str, bytes] = {}
        self.ready_event = asyncio.Event()
        self._fetches = self.metrics.counter("cai_cdh_fetches_total", "Resource fetches", ("resource", "result"))
        self._changes = self.metrics.counter("cai_cdh_resource_changes_total", "Resource files replaced with a new "
                                             "value", ("resource",))
        self._present = self.metrics.gauge("cai_cdh_resource_present", "1 when the resource file is present",
                                           ("resource",))
        self._refresh_failures = self.metrics.counter("cai_cdh_refresh_failures_total", "Failed refreshes (last "
                                                      "good value kept)", ("resource",))
        self._fetch_seconds = self.metrics.histogram("cai_cdh_fetch_seconds", "Duration of one resource fetch")
        self._ready_gauge = self.metrics.gauge("cai_cdh_ready", "1 when every required resource is present")
        for entry in self.entries:
            self._present.labels(entry.file).set(0)
            if entry.required:
                self.health.set_check(f"resource:{entry.file}", False, "not fetched yet")

    # --- fetching ------------------------------------------------------------------------------

    async def fetch_bounded(self, trustee_url: str, uri: ResourceUri) -> bytes:
        """One fetch (attestation included) of ``uri``, cut after ``attempt_timeout`` with a named error.

        Background attempts and API callers (on-demand resources) share the bound: nobody waits
        for a hung Trustee longer than one attempt.
        """
        try:
            async with asyncio.timeout(self.options.attempt_timeout):
                return await self._fetch(trustee_url, uri)
        except TimeoutError:
            # The bare "timed out" said neither who was slow nor for how long.
            raise ResourceUnavailableError(
                f"fetching {uri} from Trustee {trustee_url} timed out after "
                f"{self.options.attempt_timeout:g} s (attempt_timeout)",
                hint="the Trustee or the attestation agent is slow or hung; it is retried") from None

    async def _fetch_once(self, state: ResourceState) -> bytes:
        entry = state.entry
        state.attempts += 1
        state.last_fetch = time.time()
        started = time.monotonic()
        try:
            value = await self.fetch_bounded(entry.trustee_url, entry.uri)
        except Exception:
            self._fetches.labels(entry.file, "error").inc()
            raise
        finally:
            self._fetch_seconds.observe(time.monotonic() - started)
        self._fetches.labels(entry.file, "ok").inc()
        return value

    def _store_value(self, state: ResourceState, value: bytes) -> bool:
        entry = state.entry
        changed = self.store.write(entry.file, value)
        now = time.time()
        if changed and state.present:
            state.changes += 1
            self._changes.labels(entry.file).inc()
        if changed:
            state.last_change = now
        self._values[entry.file] = value
        state.present = True
        state.last_success = now
        self._present.labels(entry.file).set(1)
        return changed

    async def materialise(self, state: ResourceState) -> None:
        """Fetch ``state``'s resource until it is on disk, retrying with backoff (never gives up)."""
        entry = state.entry
        delays = self.options.startup_backoff.delays()
        while True:
            try:
                value = await self._fetch_once(state)
                self._store_value(state, value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state.last_error = _error_text(exc)
                delay = next(delays, self.options.startup_backoff.maximum)
                if entry.required:
                    self.health.set_check(f"resource:{entry.file}", False, state.last_error)
                log.warning("cdh.fetch_failed", resource=entry.file, uri=str(entry.uri), trustee=entry.trustee_url,
                            attempt=state.attempts, retry_in_s=round(delay, 3), error=state.last_error)
                await asyncio.sleep(delay)
                continue
            state.last_error = None
            if entry.required:
                self.health.set_check(f"resource:{entry.file}", True, "present")
            log.info("cdh.resource_ready", resource=entry.file, uri=str(entry.uri), trustee=entry.trustee_url,
                     attempts=state.attempts, path=str(self.store.path(entry.file)))
            self._update_ready()
            return

    def _update_ready(self) -> None:
        if all(state.present for state in self.states.values() if state.entry.required):
            if not self.ready_event.is_set():
                self.store.set_ready(True)
                self._ready_gauge.set(1)
                self.ready_event.set()

    async def start(self) -> None:
        """Fetch every resource concurrently; returns when all are present (optional ones included)."""
        self._update_ready()  # nothing required: ready at once
        async with asyncio.TaskGroup() as group:
            for state in self.states.values():
                group.create_task(self.materialise(state), name=f"cdh-fetch-{state.entry.file}")

    async def refresh_once(self) -> None:
        """Re-fetch every resource concurrently; failures keep the last good value."""
        await asyncio.gather(*(self._refresh(state) for state in self.states.values()))

    async def _refresh(self, state: ResourceState) -> None:
        entry = state.entry
        try:
            value = await self._fetch_once(state)
            changed = self._store_value(state, value)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.last_refresh_error = _error_text(exc)
            self._refresh_failures.labels(entry.file).inc()
            log.warning("cdh.refresh_failed", resource=entry.file, uri=str(entry.uri), trustee=entry.trustee_url,
                        kept_last_good=state.present, error=state.last_refresh_error)
            return
        state.refreshes += 1
        state.last_refresh_error = None
        if changed:
            log.info("cdh.resource_changed", resource=entry.file, uri=str(entry.uri))
        if entry.required:
            self.health.set_check(f"resource:{entry.file}", True, "present")
        self._update_ready()

    async def refresh_forever(self) -> None:
        """The periodic refresh loop (only started when ``refresh_interval`` > 0)."""
        while True:
            await asyncio.sleep(self.options.refresh_interval)
            await self.refresh_once()

    # --- API ------------------------------------------------------------------------------------

    def entry_for(self, uri: ResourceUri) -> ResourceEntry | None:
        """The configured entry for ``uri``'s path, if exactly one Trustee is configured for it."""
        matches = [entry for entry in self.entries if entry.uri.path == uri.path
                   and (uri.host is None or (entry.uri.host == uri.host and entry.uri.port == uri.port))]
        return matches[0] if len(matches) == 1 else None

    def cached(self, entry: ResourceEntry) -> bytes:
        """The last good value of a configured resource (503 until first fetched)."""
        value = self._values.get(entry.file)
        if value is None:
            state = self.states[entry.file]
            raise ResourceUnavailableError(
                f"resource {entry.uri} ({entry.file}) has not been fetched yet"
                + (f": {state.last_error}" if state.last_error else ""),
                hint="the data hub keeps retrying; see /cdh/status")
        return value

    def status(self) -> dict[str, Any]:
        """Per-resource state for ``/cdh/status`` — presence, times and errors, never values."""
        return {"ready": self.ready_event.is_set(), "resources_dir": str(self.store.directory),
                "resources": [state.describe() for state in self.states.values()]}
