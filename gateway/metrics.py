"""Prometheus metrics with TNG's names (``cx_total``, ``cx_active``, ``cx_failed``, ``tx_bytes_total``,
``rx_bytes_total``, ``live``) and labels in TNG's spirit (side, type, id, listen), plus attestation
results, so dashboards written for TNG's OTLP exporter need only a renamed data source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from agents.health import Metrics

LABELS = ("side", "type", "id", "listen")


@dataclass
class Listener:
    """The metric children of one listener (bound labels, so the hot path does no lookups)."""

    cx_total: Counter
    cx_active: Gauge
    cx_failed: Counter
    tx_bytes: Counter
    rx_bytes: Counter


class GatewayMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._cx_total = metrics.counter("cx_total", "connections accepted", LABELS)
        self._cx_active = metrics.gauge("cx_active", "connections open now", LABELS)
        self._cx_failed = metrics.counter("cx_failed", "connections that failed or were refused", LABELS)
        self._tx = metrics.counter("tx_bytes_total", "bytes sent towards the client side", LABELS)
        self._rx = metrics.counter("rx_bytes_total", "bytes received from the client side", LABELS)
        self.live = metrics.gauge("live", "1 while the gateway runs")
        self.attestation = metrics.counter("attestation_results", "peer verification results (ingress) and "
                                           "certificate refreshes (egress)", ("side", "result"))
        self.live.set(1)

    def watch_certificate(self, ident: int, certs: Any) -> None:
        """Age, refresh failures and refused handshakes of egress ``ident``'s attested certificate."""
        label = str(ident)
        self.metrics.gauge("cert_age_seconds", "age of the egress's attested certificate", ("id",)).labels(
            label).set_function(lambda: certs.age)
        self.metrics.gauge("cert_max_age_seconds", "age at which new handshakes are refused", ("id",)).labels(
            label).set(certs.max_age)
        certs.on_refresh_failed = self.metrics.counter(
            "cert_refresh_failures_total", "failed refreshes of the attested certificate (AA unreachable, ...)",
            ("id",)).labels(label).inc
        certs.on_refused = self.metrics.counter(
            "cert_refused_handshakes_total", "new connections refused because the certificate was too old",
            ("id",)).labels(label).inc

    def listener(self, side: str, kind: str, ident: int, listen: str) -> Listener:
        labels = {"side": side, "type": kind, "id": str(ident), "listen": listen}
        return Listener(self._cx_total.labels(**labels), self._cx_active.labels(**labels),
                        self._cx_failed.labels(**labels), self._tx.labels(**labels), self._rx.labels(**labels))
