"""Shared test fixtures: paths to ../shared fixtures, cached test keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CAI_SHARED_DIR", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
KBS_VECTORS = FIXTURES / "synthetic" / "kbs-protocol"
UPSTREAM = FIXTURES / "upstream"


@pytest.fixture(scope="session")
def kbs_vectors() -> Path:
    assert KBS_VECTORS.is_dir(), f"shared fixtures not found at {KBS_VECTORS} (set CAI_SHARED_DIR)"
    return KBS_VECTORS


MODEL_KEY_PATH = "default/aliyun/model-decryption-key"


@pytest.fixture
def secret() -> bytes:
    """A fresh resource value per test, so a leak check cannot pass by accident."""
    return b"model-password-" + os.urandom(12).hex().encode()


@pytest.fixture
def repository(tmp_path, secret) -> Path:
    """A Trustee repository directory holding ``secret`` at default/aliyun/model-decryption-key."""
    root = tmp_path / "repository"
    (root / MODEL_KEY_PATH).parent.mkdir(parents=True)
    (root / MODEL_KEY_PATH).write_bytes(secret)
    return root
