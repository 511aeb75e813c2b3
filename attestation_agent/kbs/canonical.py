"""Runtime-data binding: canonical JSON and the digests a TEE report must carry.

Trustee hashes structured runtime data as serde_json with keys sorted at every level and
compact separators (identical to RFC 8785 JCS for the ASCII inputs involved), using SHA-384.
The digest reaches each TEE's report differently; those encodings live here so that the
attesters, the KBS client and the Trustee stand-in share one implementation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

DIGEST_SIZE = 48  # SHA-384
TDX_REPORT_DATA_SIZE = 64
GPU_NONCE_SIZE = 32


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` exactly as Trustee's runtime-data hasher does."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


HASH_ALGORITHMS = ("sha256", "sha384", "sha512")


def runtime_data_digest(value: Any, algorithm: str = "sha384") -> bytes:
    """Digest of the canonical JSON of structured runtime data (KBS: always SHA-384; the AS REST
    API lets the caller choose with ``runtime_data_hash_algorithm``)."""
    if algorithm not in HASH_ALGORITHMS:
        raise ValueError(f"unsupported runtime-data hash algorithm {algorithm!r}; use one of {HASH_ALGORITHMS}")
    return hashlib.new(algorithm, canonical_json(value)).digest()


def binding_v0_1_0(nonce: str, tee_pubkey: dict[str, Any]) -> bytes:
    """Protocol 0.1.0: ``H({"nonce", "tee-pubkey"})``."""
    return runtime_data_digest({"nonce": nonce, "tee-pubkey": tee_pubkey})


def device_binding_v0_4_0(nonce: str, tee_pubkey: dict[str, Any]) -> bytes:
    """Protocol 0.4.0, additional devices: ``H(D)`` with ``D = {"nonce", "tee-pubkey"}``."""
    return runtime_data_digest({"nonce": nonce, "tee-pubkey": tee_pubkey})


def primary_binding_v0_4_0(nonce: str, tee_pubkey: dict[str, Any], additional_evidence: str) -> bytes:
    """Protocol 0.4.0, primary TEE: ``H(P)``; ``additional_evidence`` is the exact string sent."""
    return runtime_data_digest(
        {"additional-evidence": additional_evidence, "nonce": nonce, "tee-pubkey": tee_pubkey}
    )


def tdx_report_data(digest: bytes) -> bytes:
    """TDX REPORTDATA: the digest zero-padded (or truncated) to 64 bytes, as Trustee regularizes it."""
    return digest[:TDX_REPORT_DATA_SIZE].ljust(TDX_REPORT_DATA_SIZE, b"\0")


def gpu_nonce(digest: bytes) -> bytes:
    """NVIDIA SPDM nonce: the first 32 bytes of the binding digest."""
    if len(digest) < GPU_NONCE_SIZE:
        raise ValueError(f"GPU nonce needs at least {GPU_NONCE_SIZE} bytes of runtime data, got {len(digest)}")
    return digest[:GPU_NONCE_SIZE]
