#!/usr/bin/env bash
# Installs what the tests need (see bootstrap.sh), then runs the linter and the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k kbs -x
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests — that is a failure" >&2
  exit 1
fi
exit "$rc"
