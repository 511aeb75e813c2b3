"""The regression corpus: inputs that once crashed a target, kept forever as tests.

Layout: ``tests/fuzz/corpus/<target>/<first 16 hex of sha256>.bin``. To keep a new crash::

    .venv/bin/python -m tests.fuzz.corpus <target> <file-with-the-minimised-input>

(or write the file by hand with that name). ``test_fuzz_corpus.py`` replays every file.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def corpus_path(target: str, data: bytes) -> Path:
    return CORPUS / target / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"


def add(target: str, data: bytes) -> Path:
    """Store ``data`` for ``target`` (idempotent) and return its path."""
    from tests.fuzz.targets import TARGETS
    if target not in TARGETS:
        raise SystemExit(f"unknown fuzz target {target!r}; known: {', '.join(sorted(TARGETS))}")
    path = corpus_path(target, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def entries() -> list[tuple[str, Path]]:
    return sorted((p.parent.name, p) for p in CORPUS.glob("*/*.bin"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.fuzz.corpus <target> <input-file>")
    print(add(sys.argv[1], Path(sys.argv[2]).read_bytes()))
