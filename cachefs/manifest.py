"""The volume manifest: integrity gocryptfs itself cannot give (pure; bytes in, values out).

gocryptfs authenticates each block to its file and position, but cannot notice a whole file
swapped for another, rolled back, truncated at a block boundary, or a block zeroed into a
"hole". The manifest lists, per ciphertext path, the ciphertext size, the file ID and the
SHA-256 of the whole ciphertext. Its own SHA-256 (``sha256:<hex>``) is stored in Trustee next to
the key, so it is as trustworthy as the key release. Keys are *ciphertext* paths, so the
manifest may sit in the bucket next to the volume without revealing plaintext names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from agents import jsonutil
from cachefs.errors import ManifestError

MANIFEST_NAME = "cai-manifest.json"
MANIFEST_FORMAT = "cai-gocryptfs-manifest/1"
MAX_MANIFEST_BYTES = 64 << 20
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ManifestEntry:
    """What one ciphertext file must be."""

    size: int
    file_id: str  # 32 hex chars; "" for empty files (no header)
    sha256: str  # hex SHA-256 of the whole ciphertext file


def manifest_digest(data: bytes) -> str:
    """The value an operator stores in Trustee: ``sha256:<hex>`` of the manifest file bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(value: str) -> str:
    """Validate a configured digest string (a ``Setting`` validator: raises ``ValueError``)."""
    value = value.strip().lower()
    if not _DIGEST_RE.match(value):
        raise ValueError("manifest digest must look like sha256:<64 hex digits>")
    return value


def build_manifest(entries: Mapping[str, ManifestEntry]) -> bytes:
    """Canonical manifest bytes (sorted keys, compact), so equal volumes give equal digests."""
    files = {path: {"size": e.size, "file_id": e.file_id, "sha256": e.sha256} for path, e in sorted(entries.items())}
    return json.dumps({"format": MANIFEST_FORMAT, "files": files}, sort_keys=True, separators=(",", ":")).encode()


def parse_manifest(data: bytes, expected_digest: str | None, where: str = MANIFEST_NAME) -> dict[str, ManifestEntry]:
    """Verify ``data`` against the trusted digest (if given) and parse it."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes")
    if expected_digest is not None:
        actual = manifest_digest(data)
        if not hmac.compare_digest(actual, check_digest(expected_digest)):
            raise ManifestError(f"{where} does not match the trusted manifest digest",
                                hint="the manifest was replaced, or the digest in Trustee belongs to another "
                                     "volume; re-run the encryptor and store its digest")
    try:
        obj = jsonutil.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ManifestError(f"{where} is not valid JSON") from None
    if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT or not isinstance(obj.get("files"), dict):
        raise ManifestError(f"{where} is not a {MANIFEST_FORMAT} manifest")
    result: dict[str, ManifestEntry] = {}
    for path, item in obj["files"].items():
        if not isinstance(item, dict):
            raise ManifestError(f"{where}: entry {path!r} is not an object")
        size, file_id, digest = item.get("size"), item.get("file_id"), item.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{where}: entry {path!r} has an invalid size")
        if not isinstance(file_id, str) or not (file_id == "" or _HEX32.match(file_id)):
            raise ManifestError(f"{where}: entry {path!r} has an invalid file_id")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise ManifestError(f"{where}: entry {path!r} has an invalid sha256")
        if (size == 0) != (file_id == ""):
            raise ManifestError(f"{where}: entry {path!r}: only empty files have no file_id")
        result[path] = ManifestEntry(size, file_id, digest)
    return result
