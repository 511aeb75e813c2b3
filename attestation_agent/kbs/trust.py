"""Which certificates an ``https://`` Trustee may present.

Default: the system trust store, with host-name checking (aiohttp's default). With ``kbs_ca_cert``
the client trusts *only* the PEM certificates in that file — a private Trustee CA is the usual
case, and pinning it also keeps every public CA out. Verification itself cannot be turned off by
configuration: a Trustee we cannot authenticate could hand us keys it chose, or learn our evidence.
"""

from __future__ import annotations

import ssl

from agents.errors import ConfigError

KBS_CA_CERT_DOC = ("PEM file of the CA certificate(s) an https:// Trustee's certificate must chain to; when set, "
                   "ONLY these are trusted (not the system store). Unset: the system trust store.")


def trustee_ssl_context(ca_file: str | None, *, key: str = "kbs_ca_cert") -> ssl.SSLContext | None:
    """A client TLS context trusting only ``ca_file`` (None: keep the system default)."""
    if not ca_file:
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)  # no default certs when a cafile is given
    except FileNotFoundError:
        raise ConfigError(f"{key}: {ca_file} does not exist",
                          hint="give the path of the Trustee CA's PEM file") from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(f"{key}: cannot load CA certificates from {ca_file}: {reason}",
                          hint="the file must hold one or more PEM 'CERTIFICATE' blocks") from None
    if not context.cert_store_stats()["x509"]:
        raise ConfigError(f"{key}: {ca_file} holds no CA certificate",
                          hint="the file must hold one or more PEM 'CERTIFICATE' blocks")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
