#!/usr/bin/env bash
# Run the whole test suite against throwaway PostgreSQL servers the suite starts itself.
# Usage: ./test.sh [pytest arguments]    e.g. ./test.sh -k paging -x
# Installs what it needs first: .venv with requirements-dev.txt, PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
exec "$VENV/bin/python" -m pytest "$@"
