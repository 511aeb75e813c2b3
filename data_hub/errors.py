"""Exception hierarchy of the data hub.

Messages name what failed and where (the URI, file or Trustee) and never contain a secret value:
resource bytes, unsealed plaintext, keys and tokens stay out of every message.
"""

from __future__ import annotations

from agents.errors import CaiError, ConfigError


class DataHubError(CaiError):
    """Base class for every data hub failure."""

    http_status = 500


class ResourceUriError(DataHubError, ConfigError):
    """A ``kbs://`` resource URI or an output file name is malformed or unsafe.

    Also a :class:`ConfigError`: in configuration it stops the daemon; over the API it is a 400.
    """

    http_status = 400


class StorageError(DataHubError):
    """The resources directory cannot hold secrets (not a memory filesystem, unwritable, ...)."""

    http_status = 500


class ResourceUnavailableError(DataHubError):
    """A resource is not (yet) available: its Trustee is down or refused, or it was never fetched."""

    http_status = 503


class SealedSecretError(DataHubError):
    """A sealed secret is malformed, uses an unsupported type or provider, or cannot be decrypted."""

    http_status = 400


class SignatureError(SealedSecretError):
    """A sealed secret's JWS signature is missing, unverifiable or wrong: it is refused."""

    http_status = 403
