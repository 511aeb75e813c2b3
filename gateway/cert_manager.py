"""Keeps the egress's attested rats-tls certificate fresh and hands out the current SSLContext.

Attestation stays off the connection path: a new P-256 key, evidence bound to it and a new
certificate are made every ``refresh_interval`` seconds in the background (TNG: 600 s), and every
handshake in between reuses the current context. A failed refresh keeps serving the previous
certificate, retrying with backoff (1 s doubling up to ``refresh_interval``), until it is
``max_age`` old (default 2.5 refresh intervals: one missed refresh is harmless, two in a row are
not); from then on every new handshake is refused with a TLS ``internal_error`` alert and a logged
reason (fail closed: evidence that can no longer be renewed is not presented for ever), and
connections already established are left alone. The next successful refresh serves again. The
egress is not ready before the first certificate.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agents.logsetup import get_logger
from agents.retry import Backoff
from gateway import ratls_format_a
from gateway.attester import EvidenceProvider
from gateway.errors import GatewayError
from gateway.ratls_cert import (
    EvidenceRecord,
    binding_claims,
    build_certificate,
    report_data,
    runtime_data_text,
    spki_der,
)

log = get_logger("gateway.cert")

MIN_REFRESH = 10.0
STALE_AFTER_INTERVALS = 2.5  # default max_age, in refresh intervals
REFUSAL_LOG_INTERVAL = 10.0  # seconds between "refusing: certificate expired" log lines
SHM = "/dev/shm"  # noqa: S108 - tmpfs chosen on purpose (keys must not touch disk)


def server_context(cert_der: bytes, key: ec.EllipticCurvePrivateKey, alpn: str) -> ssl.SSLContext:
    """A TLS 1.3-only server context presenting ``cert_der`` and offering exactly one ALPN protocol."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([alpn])
    # load_cert_chain only reads files: use a private temporary directory and remove it at once.
    # The private key must never reach persistent disk: prefer the tmpfs /dev/shm.
    with tempfile.TemporaryDirectory(prefix="cai-gw-", dir=SHM if os.path.isdir(SHM) else None) as d:
        cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        with open(os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            fh.write(ssl.DER_cert_to_PEM_cert(cert_der).encode("ascii"))
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


class AttestedCertManager:
    """Produces attested certificates with evidence from ``provider`` (or plain ones for ``no_ra``).

    ``binding`` is ``"B"`` (TNG >= 2.2.5 clients) or ``"A"`` (TNG <= 2.2.4, ``"compat": "2.2.4"``).
    """

    def __init__(self, provider: EvidenceProvider | None, *, alpn: str, refresh_interval: float = 600.0,
                 clock: Callable[[], datetime.datetime] | None = None, binding: str = "B",
                 max_age: float | None = None) -> None:
        if binding not in ("A", "B"):
            raise ValueError(f"unknown rats-tls binding format {binding!r}")
        self.provider = provider
        self.binding = binding
        self.alpn = alpn
        self.refresh_interval = max(float(refresh_interval), MIN_REFRESH)
        self.max_age = float(max_age) if max_age is not None else self.refresh_interval * STALE_AFTER_INTERVALS
        self.last_error: str | None = None  # of the latest failed refresh; None after a good one
        self.refused = 0  # handshakes refused because the certificate was too old
        self.on_refused: Callable[[], None] | None = None  # metric hooks, set by the daemon
        self.on_refresh_failed: Callable[[], None] | None = None
        self._made_at = 0.0  # monotonic time of the current certificate
        self._refusal_logged_at: float | None = None
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._context: ssl.SSLContext | None = None
        self.cert_der: bytes | None = None
        self.refreshes = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:
            raise GatewayError("no attested certificate yet", hint="the first refresh has not succeeded")
        return self._context

    @property
    def ready(self) -> bool:
        return self._context is not None

    async def refresh(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._clock() - datetime.timedelta(minutes=1)
        claims_buffer = b""
        if self.provider is None:  # no_ra: a plain self-signed certificate, debug only
            record = None
        else:
            spki = spki_der(key.public_key())
            if self.binding == "A":
                claims_buffer = ratls_format_a.claims_buffer(spki)
                runtime = ratls_format_a.runtime_data_text(claims_buffer)
            else:
                runtime = runtime_data_text(binding_claims(spki))
            evidence = await self.provider.evidence(report_data(runtime))
            record = EvidenceRecord(tee_type=await self.provider.tee_type(), aa_evidence=evidence,
                                    aa_runtime_data=runtime)
        der = (build_certificate(key, record, now, claims_buffer=claims_buffer) if record
               else _plain_certificate(key, now))
        context = server_context(der, key, self.alpn)
        made_at = time.monotonic()
        if record is not None:
            context.sni_callback = lambda *_: self._refuse_if_stale(made_at)  # runs on every ClientHello
        self._context, self._made_at = context, made_at
        self.cert_der = der
        self.refreshes += 1
        log.info("gateway.cert.refreshed", size=len(der), attested=record is not None, alpn=self.alpn,
                 binding=self.binding)

    @property
    def stale(self) -> bool:
        """True once new handshakes are refused: the attested certificate is older than ``max_age``."""
        return self.provider is not None and self._context is not None and self.age > self.max_age

    def probe(self) -> tuple[bool, str]:
        """Readiness of this egress: ``(ok, detail)``; not ready once new handshakes would be refused."""
        if self._context is None:
            return False, "no attested certificate yet"
        age = self.age
        if self.stale:
            return False, (f"attested certificate is {age:.0f} s old (max_age {self.max_age:.0f} s): new connections "
                           f"are refused; last refresh error: {self.last_error}")
        if self.last_error is not None:
            return True, f"serving a {age:.0f} s old certificate; refresh failing: {self.last_error}"
        return True, f"certificate {age:.0f} s old"

    @property
    def age(self) -> float:
        """Seconds since the current certificate was made."""
        return time.monotonic() - self._made_at

    def _refuse_if_stale(self, made_at: float) -> int | None:
        """TLS server-name callback: ``None`` lets the handshake go on; an alert number aborts it."""
        age = time.monotonic() - made_at
        if age <= self.max_age:
            return None
        self.refused += 1
        if self.on_refused is not None:
            self.on_refused()
        now = time.monotonic()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            self._refusal_logged_at = now
            log.error("gateway.cert.expired", refused=self.refused, age_s=round(age, 1), max_age_s=self.max_age,
                      last_error=self.last_error,
                      message="refusing new connections: the attested certificate is older than max_age and "
                      "could not be refreshed; is the attestation agent running? Serving resumes after the "
                      "next successful refresh")
        return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR

    async def _loop(self) -> None:
        retry = Backoff(initial=1.0, maximum=self.refresh_interval, attempts=sys.maxsize)
        delay, delays = self.refresh_interval, retry.delays()
        while True:
            await asyncio.sleep(delay)
            try:
                await self.refresh()
            except Exception as exc:
                self.last_error = str(exc)
                if self.on_refresh_failed is not None:
                    self.on_refresh_failed()
                delay = next(delays)
                log.error("gateway.cert.refresh_failed", error=self.last_error, error_type=type(exc).__name__,
                          age_s=round(self.age, 1), refuse_in_s=round(max(0.0, self.max_age - self.age), 1),
                          retry_in_s=round(delay, 1))
                continue
            if self.last_error is not None:
                log.info("gateway.cert.recovered", previous_error=self.last_error)
                self.last_error = None
                self._refusal_logged_at = None
            delay, delays = self.refresh_interval, retry.delays()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="gateway-cert-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _plain_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CAI no_ra debug cert")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(42).not_valid_before(now).not_valid_after(now + datetime.timedelta(hours=6))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)
