"""Unsealing: verify the sealed secret's signature, then resolve it through the KBS.

The async shell around :mod:`data_hub.sealed`: it finds the verification key named by ``kid``
(a ``kbs://`` resource, or a file in the configured keys directory — never outside it) and fetches
the vault resource or the envelope KEK from Trustee.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from agents.logsetup import get_logger, register_secret
from data_hub import sealed
from data_hub.errors import ResourceUriError, SealedSecretError, SignatureError
from data_hub.uri import FILE_NAME_RE, ResourceUri, parse_kbs_uri

log = get_logger("cdh.unseal")

Fetch = Callable[[ResourceUri], Awaitable[bytes]]


class Unsealer:
    """Unseals CoCo sealed secrets; ``fetch`` reads a KBS resource (attesting as needed)."""

    def __init__(self, fetch: Fetch, *, keys_dir: str | Path | None, skip_verification: bool = False) -> None:
        self._fetch = fetch
        self.keys_dir = Path(keys_dir) if keys_dir is not None else None
        self.skip_verification = skip_verification
        if skip_verification:
            log.warning("cdh.sealed_verification_disabled",
                        message="SEALED SECRET SIGNATURES ARE NOT CHECKED (skip_sealed_secret_verification): "
                        "anyone who can write a sealed secret can make this workload fetch any KBS resource")

    async def _kbs(self, text: str, what: str) -> bytes:
        try:
            uri = parse_kbs_uri(text)
        except ResourceUriError as exc:
            raise SealedSecretError(f"sealed secret {what}: {exc.message}", hint=exc.hint) from None
        return await self._fetch(uri)

    def _local_key(self, kid: str) -> bytes:
        if self.keys_dir is None:
            raise SignatureError(f"sealed secret key id {kid[:200]!r} is not a kbs:// URI and no local keys "
                                 "directory is configured", hint="set sealed_keys_dir")
        # One path component only: no '/', no '..', no hidden files.
        if not FILE_NAME_RE.match(kid):
            raise SignatureError(f"sealed secret key id {kid[:200]!r} is not a kbs:// URI or a key file name",
                                 hint="kid must be kbs:///<repo>/<type>/<tag> or a file name in sealed_keys_dir")
        base = os.path.realpath(self.keys_dir)
        path = os.path.realpath(os.path.join(base, kid))
        if os.path.dirname(path) != base:
            raise SignatureError(f"sealed secret key id {kid[:200]!r} resolves outside {self.keys_dir}")
        try:
            with open(path, "rb") as fh:
                return fh.read(sealed.MAX_KEY_FILE + 1)
        except OSError as exc:
            raise SignatureError(f"cannot read sealed secret verification key {kid!r} in {self.keys_dir}: "
                                 f"{exc.strerror}", hint="provision the key file or use a kbs:// kid") from None

    async def _verification_key(self, kid: str) -> bytes:
        if kid.startswith("kbs://"):
            return await self._kbs(kid, "key id")
        return self._local_key(kid)

    async def unseal(self, text: str | bytes) -> bytes:
        """The plaintext of sealed secret ``text``; registered for log redaction before it is returned."""
        secret = sealed.parse_sealed(text)
        if not self.skip_verification:
            kid = secret.kid
            if not kid:
                raise SignatureError("sealed secret has no 'kid' in its JWS header, so it cannot be verified",
                                     hint="sign it with ES256 and a kid, or (insecure) set "
                                     "skip_sealed_secret_verification")
            sealed.verify(secret, sealed.load_verification_key(await self._verification_key(kid)))
        body = secret.secret
        if body.provider != sealed.KBS_PROVIDER:
            raise SealedSecretError(f"sealed secret provider {body.provider[:40]!r} is not supported",
                                    hint="this data hub unseals provider 'kbs' (Trustee) only")
        if isinstance(body, sealed.VaultSecret):
            value = await self._kbs(body.name, "name")
        else:
            kek = await self._kbs(body.key_id, "key_id")
            value = sealed.envelope_decrypt(body, kek)
        register_secret(value)
        log.info("cdh.unsealed", type="vault" if isinstance(body, sealed.VaultSecret) else "envelope",
                 verified=not self.skip_verification, size=len(value))
        return value
