#!/usr/bin/env bash
# The one-command demo: a full and an incremental sync of a 200,000-row table, end to end.
#
# Usage: ./demo.sh [--rows N] [--limit N] [--max-response-bytes N] [--quiet]
#
#   --rows                 rows in the demo table public.orders (default: 200000)
#   --limit                the connector's 'limit' setting (rows per response)
#   --max-response-bytes   the connector's 'max_response_bytes' setting
#   --quiet                no per-batch progress lines
#
# Starts a throwaway local PostgreSQL, fills public.orders, invokes lambda_handler in-process
# as Fivetran's AWS Lambda connector would (feeding the state back while hasMore), upserts
# every batch into an in-memory destination and proves the copy with checksums computed on
# both sides; then does the same for an incremental sync of 3 new and 2 updated rows. The
# server and its files are removed at the end, also on Ctrl-C. Exit status: 0 when both
# checks match, 1 on a mismatch or error, 130 when interrupted.
# Installs what it needs first: .venv with requirements-dev.txt, PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
exec "$VENV/bin/python" scripts/demo.py "$@"
