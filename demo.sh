#!/usr/bin/env bash
# The one-command demo: three tables of different modes in one connector, a full and an
# incremental sync, end to end, directly or through S3.
#
# Usage: ./demo.sh [--rows N] [--limit N] [--max-response-bytes N] [--duckdb PATH] [--quiet]
#        ./demo.sh --s3 [--s3-max-bytes N] [the same options]
#        ./demo.sh --serve [--rows N]
#
#   --rows                 rows in public.orders (default: 200000; order_lines gets a quarter
#                          as many, products always 500)
#   --limit                the connector's 'limit' setting (rows per response)
#   --max-response-bytes   the connector's 'max_response_bytes' setting
#   --s3                   sync through S3: a SeaweedFS server on loopback, one object per batch
#   --s3-max-bytes         with --s3: the connector's 's3_max_bytes' setting
#   --duckdb PATH          the destination DuckDB file (default: demo.duckdb, replaced each run)
#   --quiet                no per-batch progress lines
#   --serve                only start and fill the database, print its REDSHIFT_LAMBDA_* settings
#
# Starts a throwaway local PostgreSQL with public.orders (incremental by updated_at, many ties),
# public.order_lines (incremental, composite key) and public.products (no cursor: full
# refresh), invokes lambda_handler in-process as Fivetran's AWS Lambda connector would (feeding
# the state back while hasMore), applies every response (or, with --s3, every object it wrote)
# to a DuckDB warehouse and proves each table's copy with checksums computed in SQL on both
# sides; then changes the source (inserts, updates, three products deleted) and does the same
# for an incremental sync, which must deliver exactly the changes and the deleted keys. The
# servers and their files are removed at the end, also on Ctrl-C. Exit status: 0 when every
# check matches, 1 on a mismatch or error, 130 when interrupted.
# Installs what it needs first: .venv with requirements-dev.txt, PostgreSQL server binaries.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/bootstrap.sh
source scripts/bootstrap.sh
exec "$VENV/bin/python" scripts/demo.py "$@"
