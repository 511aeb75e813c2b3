"""Coverage-guided fuzzing of the same target table with atheris (libFuzzer) — local campaigns only.

Usage (atheris is not a test dependency: ``.venv/bin/pip install atheris``)::

    .venv/bin/python -m tests.fuzz.atheris_main <target> [libFuzzer flags, e.g. -max_total_time=300]
    .venv/bin/python -m tests.fuzz.atheris_main list

The target's seeds are written to a fresh corpus directory first. A crash (any exception other
than the target's clean errors) stops the run and libFuzzer writes ``crash-<sha1>``; minimise it
with ``-minimize_crash=1``, fix the parser, and keep the input with
``python -m tests.fuzz.corpus <target> crash-<sha1>``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["agents", "attestation_agent", "data_hub", "cachefs", "gateway",
                                             "trustee_standin"]):
        from tests.fuzz.targets import TARGETS, check

    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print("targets:", " ".join(sorted(TARGETS)))
        raise SystemExit(0 if len(sys.argv) > 1 and sys.argv[1] == "list" else 2)
    name = sys.argv.pop(1)
    corpus = Path(tempfile.mkdtemp(prefix=f"atheris-{name}-"))
    for index, seed in enumerate(TARGETS[name].seeds()):
        (corpus / f"seed-{index}").write_bytes(seed)

    def one_input(data: bytes) -> None:
        check(name, data)

    atheris.Setup([*sys.argv, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
