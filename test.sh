#!/usr/bin/env bash
# Run the whole test suite against throwaway PostgreSQL servers the suite starts itself.
# Usage: ./test.sh [pytest arguments]    e.g. ./test.sh -k paging -x    (-q: dots only)
# Installs what it needs first: .venv with requirements-dev.txt, PostgreSQL server binaries.
# The whole suite takes 8 to 15 minutes on 2 cores; each test's name is printed as it starts
# (pytest -v), and the 15 slowest are listed at the end (see docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
if [[ $# -eq 0 ]]; then
  echo "Running the whole test suite: 8 to 15 minutes on 2 cores; each test's name is shown" \
    "as it starts (a few take 30 s or more: docs/testing.md names them)." >&2
fi
exec "$VENV/bin/python" -m pytest -v --durations=15 "$@"
