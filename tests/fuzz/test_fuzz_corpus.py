"""Replay every input that ever crashed a fuzz target: each must now give a value or a clean error."""

from __future__ import annotations

import pytest

from tests.fuzz.corpus import CORPUS, corpus_path, entries
from tests.fuzz.targets import TARGETS, check

ENTRIES = entries()


def test_corpus_is_well_formed():
    assert ENTRIES, f"the regression corpus at {CORPUS} is empty"
    for name, path in ENTRIES:
        assert name in TARGETS, f"{path} belongs to no fuzz target (renamed?)"
        assert corpus_path(name, path.read_bytes()) == path, f"{path} is not named after its sha256"


@pytest.mark.parametrize(("name", "path"), ENTRIES, ids=[f"{n}/{p.name}" for n, p in ENTRIES])
def test_past_crash_is_now_clean(name, path):
    check(name, path.read_bytes())  # raises on anything but a value or the target's clean errors
