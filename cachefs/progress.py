"""Download progress of the ciphertext cache, as Prometheus metrics and sparse log lines.

Operators watch a multi-GB model arrive; they need "how much, how fast, how much left" without a
log line per chunk. Metrics are updated on every chunk; logs are written when progress crosses
each ``step_percent`` boundary (deterministic, so tests can assert on them) and on completion.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agents.health import Metrics
from agents.logsetup import get_logger

__all__ = ["DownloadProgress"]

log = get_logger("cachefs.progress")


class DownloadProgress:
    """Counts cached (present) bytes against the volume total and network bytes by reason."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        location: str,
        clock: Callable[[], float] = time.monotonic,
        step_percent: int = 10,
    ) -> None:
        if not 1 <= step_percent <= 100:
            raise ValueError("step_percent must be within 1..100")
        self._location = location
        self._clock = clock
        self._step = step_percent
        self.total_bytes = 0
        self.present_bytes = 0
        self.total_objects = 0
        self.objects_remaining = 0
        self._started = clock()
        self._fetched_since_start = 0
        self._last_step = -1
        self._completed_logged = False
        self._fetched = metrics.counter(
            "cachefs_download_bytes_total",
            "Ciphertext bytes fetched from the source, by reason (demand = a read waited; background; passthrough).",
            labels=("reason",),
        )
        self._bytes_remaining = metrics.gauge(
            "cachefs_download_bytes_remaining", "Ciphertext bytes of the volume not yet in the local cache."
        )
        self._objects_remaining = metrics.gauge(
            "cachefs_download_objects_remaining", "Files of the volume not yet completely in the local cache."
        )
        self._cached = metrics.gauge("cachefs_cache_bytes", "Ciphertext bytes present in the local cache.")

    def reset(self, *, total_bytes: int, present_bytes: int, total_objects: int, complete_objects: int) -> None:
        """Start counting for a (new) listing; ``present_bytes`` were reused from a previous run."""
        self.total_bytes = total_bytes
        self.present_bytes = present_bytes
        self.total_objects = total_objects
        self.objects_remaining = total_objects - complete_objects
        self._started = self._clock()
        self._fetched_since_start = 0
        self._last_step = self._percent() // self._step
        self._completed_logged = self.objects_remaining == 0
        self._publish()
        log.info(
            "ciphertext cache state",
            location=self._location,
            bytes_total=total_bytes,
            bytes_cached=present_bytes,
            objects_total=total_objects,
            objects_remaining=self.objects_remaining,
        )

    def fetched(self, nbytes: int, reason: str) -> None:
        """Bytes arrived from the network (whether or not they could be cached)."""
        self._fetched.labels(reason=reason).inc(nbytes)
        self._fetched_since_start += nbytes

    def chunk_cached(self, nbytes: int) -> None:
        """A chunk became present (downloaded and written, or re-verified)."""
        self.present_bytes += nbytes
        self._publish()
        step = self._percent() // self._step
        if step > self._last_step and self.objects_remaining > 0:
            self._last_step = step
            self._log("ciphertext download progress")

    def chunk_dropped(self, nbytes: int) -> None:
        """A chunk thought present turned out corrupt and must be fetched again."""
        self.present_bytes = max(0, self.present_bytes - nbytes)
        self._publish()

    def object_complete(self) -> None:
        self.objects_remaining = max(0, self.objects_remaining - 1)
        self._publish()
        if self.objects_remaining == 0 and not self._completed_logged:
            self._completed_logged = True
            self._log("ciphertext download complete")

    def _percent(self) -> int:
        if self.total_bytes <= 0:
            return 100
        return min(100, self.present_bytes * 100 // self.total_bytes)

    def _publish(self) -> None:
        self._bytes_remaining.set(max(0, self.total_bytes - self.present_bytes))
        self._objects_remaining.set(self.objects_remaining)
        self._cached.set(self.present_bytes)

    def _log(self, event: str) -> None:
        elapsed = max(1e-9, self._clock() - self._started)
        log.info(
            event,
            location=self._location,
            percent=self._percent(),
            bytes_cached=self.present_bytes,
            bytes_total=self.total_bytes,
            objects_remaining=self.objects_remaining,
            mb_per_s=round(self._fetched_since_start / elapsed / 1e6, 1),
        )
