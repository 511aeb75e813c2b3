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
