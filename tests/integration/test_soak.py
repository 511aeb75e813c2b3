"""A bounded soak of the whole chain in CI: the code path of ``benchmarks/soak.py``, with less load.

The local soak runs ten minutes (benchmarks/SOAK.md); here the load ends after a fixed amount of
work (:data:`REQUESTS` gateway requests after the warm-up, each on a new connection) or at the
cap, whichever comes first. What it proves: under concurrent gateway traffic, model reads,
attestation-agent calls and a data hub refreshing every second, nothing fails, no byte read from
the mount differs from the plaintext, resources stay equal to the Trustees' values, no secret is
logged or persisted, and no daemon leaks descriptors, threads or per-connection memory.

The memory bound is derived from the work done rather than from time: with at least
:data:`REQUESTS` connections through each gateway in the measured window, a leak of
``RSS_BOUND_KIB / REQUESTS`` KiB (2 KiB) per connection — one forgotten buffer, task or TLS object —
exceeds the bound, while allocator noise stays below it (under 0.5 MiB per daemon, measured locally).
The egress leak the soak found (a finished connection's TLS session kept alive by a reference cycle,
~3.5 KiB per connection, see benchmarks/SOAK.md) fails this test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.soak import (
    FD_GROWTH_MAX,
    THREAD_GROWTH_MAX,
    SoakConfig,
    error_metrics,
    render,
    run_soak,
)

pytestmark = pytest.mark.timeout(150)

REQUESTS = 2500  # gateway requests (= connections through ingress and egress) in the measured window
RSS_BOUND_KIB = 5 * 1024  # 2 KiB leaked per connection x 2500 connections
CONFIG = SoakConfig(duration=75.0, clients=3, readers=1, refresh=1.0, aa_interval=0.5, resource_interval=1.0,
                    sample_interval=1.0, warmup=0.1, target_requests=REQUESTS)


async def test_chain_under_sustained_load_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    result = await run_soak(tmp_path, CONFIG)
    c = result.counts
    report = render(result, title="CI soak")

    # Nothing failed, nothing was wrong.
    assert all(code is None for code in result.exited.values()), result.exited
    assert c.asks_failed == 0 and c.asks_ok > REQUESTS, report
    assert c.read_errors == 0 and c.read_mismatches == 0 and c.reads > 100 and c.whole_file_reads > 10, report
    assert c.aa_failed == 0 and c.aa_ok > 10, report
    assert c.resource_mismatches == 0 and c.resource_checks > 10, report
    for name in result.daemons:
        before, after = error_metrics(result.metrics_before[name]), error_metrics(result.metrics_after[name])
        assert {k: v for k, v in after.items() if v > before.get(k, 0.0)} == {}, f"{name} counted errors\n{report}"
    assert result.persisted == [] and result.secrets_in_logs == [], report

    # The load really happened: the data hub kept refreshing, each gateway saw the connections.
    assert result.refreshes > 10, report
    assert result.measured_requests >= REQUESTS, (
        f"only {result.measured_requests} gateway requests within the {CONFIG.duration:g} s cap: the machine is "
        "too loaded for the memory bound to mean anything")
    for gateway in ("gateway", "ingress"):
        assert result.connections[gateway] > REQUESTS, report

    # Nothing leaked: descriptors and threads back to the quiet baseline, memory within the bound.
    for name, growth in result.growth.items():
        assert growth.fds_end - growth.fds_baseline <= FD_GROWTH_MAX, f"{name} leaks descriptors\n{report}"
        assert growth.threads_end - growth.threads_baseline <= THREAD_GROWTH_MAX, f"{name} leaks threads\n{report}"
        assert growth.rss_growth <= RSS_BOUND_KIB, f"{name} leaks memory\n{report}"
        assert growth.rss_max - growth.rss_warm <= 2 * RSS_BOUND_KIB, f"{name} memory peaks\n{report}"
