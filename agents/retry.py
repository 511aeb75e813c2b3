"""Retry with capped exponential backoff and jitter.

Trustee, object storage and the AA restart independently of each other; callers retry
transient failures, but never errors that would only repeat (bad policy, bad config, 4xx).
The delay schedule is a pure function so it can be tested exhaustively.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Backoff schedule: ``attempts`` tries, i.e. ``attempts - 1`` delays.

    Delay ``n`` (0-based) is ``min(maximum, initial * multiplier**n)`` scaled by a random factor
    in ``[1 - jitter, 1 + jitter]`` and capped at ``maximum``, so simultaneous restarts of many
    VMs do not hit Trustee in lock-step.
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    attempts: int = 5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Backoff.attempts must be at least 1")
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("Backoff delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("Backoff.multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff.jitter must be within [0, 1]")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Yield the ``attempts - 1`` sleeps between attempts."""
        source = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto
        base = self.initial
        for _ in range(self.attempts - 1):
            capped = min(self.maximum, base)
            factor = 1.0 + source.uniform(-self.jitter, self.jitter)
            yield min(self.maximum, max(0.0, capped * factor))
            # Stop growing once capped so the float never overflows on long schedules.
            base = min(self.maximum, base * self.multiplier)


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    retry_on: Callable[[BaseException], bool],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Call ``fn`` until it succeeds, retrying only errors for which ``retry_on`` is true.

    ``on_retry(attempt, error, delay)`` runs before each sleep (attempt is 1-based: the attempt
    that just failed), typically to log. After the last attempt the last error is re-raised.
    Cancellation is never retried.
    """
    delays = backoff.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            if not retry_on(exc):
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await sleep(delay)
