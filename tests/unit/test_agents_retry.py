"""Backoff schedule properties and retry_call behaviour."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.retry import Backoff, retry_call


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


def test_delays_grow_and_cap_without_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, multiplier=2.0, jitter=0.0, attempts=7)
    assert list(backoff.delays()) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_delays_jitter_within_proportion_and_deterministic_with_seed() -> None:
    backoff = Backoff(initial=1.0, maximum=100.0, jitter=0.2, attempts=6)
    delays = list(backoff.delays(random.Random(7)))
    assert delays == list(backoff.delays(random.Random(7)))
    for index, delay in enumerate(delays):
        nominal = 2.0**index
        assert nominal * 0.8 <= delay <= nominal * 1.2
    assert len(set(delays)) == len(delays)


@given(
    initial=st.floats(0, 10),
    maximum=st.floats(0, 60),
    multiplier=st.floats(1, 10),
    jitter=st.floats(0, 1),
    attempts=st.integers(1, 40),
    seed=st.integers(0, 2**32),
)
def test_delays_bounds_property(
    initial: float, maximum: float, multiplier: float, jitter: float, attempts: int, seed: int
) -> None:
    backoff = Backoff(
        initial=initial, maximum=maximum, multiplier=multiplier, jitter=jitter, attempts=attempts
    )
    delays = list(backoff.delays(random.Random(seed)))
    assert len(delays) == attempts - 1
    for index, delay in enumerate(delays):
        nominal = min(maximum, initial * multiplier**index)
        assert 0.0 <= delay <= maximum
        assert nominal * (1 - jitter) - 1e-9 <= delay <= nominal * (1 + jitter) + 1e-9


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"initial": -1.0}, {"multiplier": 0.5}, {"jitter": 1.5}])
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]


async def test_retry_call_retries_transient_then_succeeds() -> None:
    calls: list[int] = []
    slept: list[float] = []
    retries: list[tuple[int, str, float]] = []

    async def fn() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Transient(f"try {len(calls)}")
        return "token"

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    result = await retry_call(
        fn,
        Backoff(initial=1.0, jitter=0.0, attempts=5),
        retry_on=lambda exc: isinstance(exc, Transient),
        on_retry=lambda attempt, exc, delay: retries.append((attempt, str(exc), delay)),
        sleep=fake_sleep,
    )
    assert result == "token"
    assert len(calls) == 3
    assert slept == [1.0, 2.0]
    assert retries == [(1, "try 1", 1.0), (2, "try 2", 2.0)]


async def test_retry_call_never_retries_permanent_errors() -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise Permanent("policy denied")

    async def fake_sleep(delay: float) -> None:
        raise AssertionError("must not sleep")

    with pytest.raises(Permanent, match="policy denied"):
        await retry_call(fn, Backoff(), retry_on=lambda exc: isinstance(exc, Transient), sleep=fake_sleep)
    assert calls == 1


async def test_retry_call_stops_after_attempts_and_reraises_last() -> None:
    calls = 0
    slept: list[float] = []

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise Transient(f"failure {calls}")

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    with pytest.raises(Transient, match="failure 4"):
        await retry_call(fn, Backoff(attempts=4), retry_on=lambda exc: True, sleep=fake_sleep)
    assert calls == 4
    assert len(slept) == 3


async def test_retry_call_real_sleep_single_attempt() -> None:
    async def fn() -> int:
        return 42

    assert await retry_call(fn, Backoff(attempts=1), retry_on=lambda exc: True) == 42
