"""Configuration of the Trustee stand-in (development and tests only).

Each field mirrors a knob of a real Trustee deployment (KBS ``[attestation_service] timeout``,
AS ``duration_min``, the resource policy, the gateway) so tests can reproduce a specific
deployment instead of one hard-wired behaviour.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agents.errors import ConfigError
from attestation_agent.kbs.dialect import Dialect
from trustee_standin.policies import SIMPLE_DEFAULT_POLICY

ErrorStyle = Literal["openanolis", "coco"]
AsApi = Literal["both", "flat", "verification_requests"]
TokenAlg = Literal["RS384", "ES256"]

#: Resource policy: ``"allow_all"`` (Trustee 1.5.2's built-in default), ``"deny_all"``, or glob
#: patterns over ``repo/type/tag`` that are allowed (everything else is denied).
ResourcePolicy = str | Sequence[str]

MAX_BODY = 1024 * 1024  # request bodies above this get 413


@dataclass
class StandinConfig:
    """Everything that distinguishes one simulated Trustee from another."""

    #: The ONE protocol version this KBS accepts (exact match, like Trustee).
    dialect: Dialect = Dialect.V0_1_0
    #: Resource directory laid out ``<repo>/<type>/<tag>`` (Trustee ``LocalFs`` ``dir_path``).
    repository: Path = Path("repository")
    resource_policy: ResourcePolicy = "allow_all"
    #: KBS session lifetime (Trustee default 5 min).
    session_timeout_s: float = 300.0
    #: Attestation token lifetime (AS ``duration_min``, default 5 min).
    token_duration_s: float = 300.0
    #: ``exp``/``nbf`` leeway when verifying tokens (jsonwebtoken's default is 60 s).
    token_leeway_s: float = 60.0
    #: TEE types whose evidence is accepted; None = every registered verifier (incl. ``sample``,
    #: which a stock Trustee 1.5 accepts).
    allowed_tees: frozenset[str] | None = None
    #: ``openanolis`` = Trustee 1.5.x status mapping (500 for RCAR failures, 403 policy, ...);
    #: ``coco`` = upstream CoCo (401 for almost everything, causes in the detail).
    error_style: ErrorStyle = "openanolis"
    #: Serve the trustee-gateway ``/api`` prefix as well as the bare ``/kbs/v0`` paths.
    gateway_prefix: bool = True
    #: Emit ``Set-Cookie`` twice on ``/api`` responses, as trustee-gateway does.
    duplicate_set_cookie: bool = False
    #: Version string the simulated gateway's health probe sends; None = the KBS's own dialect.
    gateway_probe_version: str | None = None
    #: Attestation policies known to the AS: id -> rego text (only its SHA-384 is used: the
    #: stand-in does not run OPA; every known policy allows).
    attestation_policies: Mapping[str, str] = field(
        default_factory=lambda: {"default": SIMPLE_DEFAULT_POLICY})
    #: Which AS ``/attestation`` request shapes are accepted (1.5 flat, >= 1.6 list, or both).
    as_api: AsApi = "both"
    #: Signature algorithm of tokens returned by the AS REST endpoint (KBS tokens are RS384).
    as_token_alg: TokenAlg = "RS384"  # noqa: S105 - an algorithm name, not a secret
    #: Directory holding the test CA (created there when empty); None = a private temp dir.
    ca_dir: Path | None = None
    #: Ed25519 public key (PEM) that admin JWTs must verify against.
    admin_public_key_pem: bytes | None = None
    #: Skip admin authentication (Trustee ``insecure_api = true``).
    insecure_admin: bool = False
    #: Expose ``/__standin__/faults`` and ``/__standin__/counters`` (test-only control plane).
    fault_endpoint: bool = True
    #: Time source (seconds since the epoch); tests substitute a fake clock to expire things.
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not isinstance(self.dialect, Dialect):
            try:
                self.dialect = Dialect.parse(str(self.dialect))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self.repository = Path(self.repository)
        if self.ca_dir is not None:
            self.ca_dir = Path(self.ca_dir)
        if self.error_style not in ("openanolis", "coco"):
            raise ConfigError(f"unknown error_style {self.error_style!r}", hint="use 'openanolis' or 'coco'")
        if self.as_api not in ("both", "flat", "verification_requests"):
            raise ConfigError(f"unknown as_api {self.as_api!r}")
        if self.as_token_alg not in ("RS384", "ES256"):
            raise ConfigError(f"unknown as_token_alg {self.as_token_alg!r}", hint="use RS384 or ES256")
        if self.session_timeout_s <= 0 or self.token_duration_s < 0 or self.token_leeway_s < 0:
            raise ConfigError("session_timeout_s must be > 0; token_duration_s and token_leeway_s >= 0")
        if isinstance(self.resource_policy, str):
            if self.resource_policy not in ("allow_all", "deny_all"):
                raise ConfigError(
                    f"unknown resource policy {self.resource_policy!r}",
                    hint="use 'allow_all', 'deny_all' or a list of 'repo/type/tag' glob patterns",
                )
        else:
            self.resource_policy = tuple(self.resource_policy)
            if not all(isinstance(p, str) and p.count("/") == 2 for p in self.resource_policy):
                raise ConfigError("resource policy patterns must look like 'repo/type/tag' (globs allowed)")
        if not self.attestation_policies:
            raise ConfigError("at least one attestation policy id is needed (Trustee uses 'default')")
        if self.allowed_tees is not None:
            self.allowed_tees = frozenset(self.allowed_tees)
