#!/usr/bin/env bash
# The Fivetran Connector SDK's command line from .venv, without activating it and without
# asking PyPI about the project's imports.
#
# Usage: scripts/sdk.sh COMMAND [ARGS...]     run in the SDK project (build/sdk), e.g.
#          ../../scripts/sdk.sh debug --configuration configuration.json
#          ../../scripts/sdk.sh reset
#        (deploy works too; see docs/connector-sdk.md)
#
# Why: `fivetran debug` runs `pipreqs` found on PATH (so .venv/bin/fivetran alone fails with
# FileNotFoundError: 'pipreqs' unless .venv is activated), and pipreqs asks PyPI about every
# import it cannot map to an installed package's top_level.txt (pg8000 has none): offline the
# SDK then retries three times, about 15 s and a page of tracebacks. For debug, run and reset
# this script puts scripts/sdk-bin first on PATH, whose pipreqs answers with the project's own
# requirements.txt (the pinned packages of the Lambda zip: tests/test_packaging.py runs the
# function with nothing else installed); for every other command (deploy) the real pipreqs.
set -euo pipefail

die() { echo "sdk.sh: error: $*" >&2; exit 1; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$root/.venv}
[[ -x "$venv/bin/fivetran" ]] || die "no $venv/bin/fivetran: run ./demo.sh or ./test.sh once first (they create .venv)"
[[ $# -ge 1 ]] || die "usage: scripts/sdk.sh COMMAND [ARGS...], e.g. scripts/sdk.sh debug --configuration configuration.json"
case $1 in
  debug | run | reset) PATH="$root/scripts/sdk-bin:$venv/bin:$PATH" ;;
  *) PATH="$venv/bin:$PATH" ;;
esac
export PATH DO_NOT_TRACK=${DO_NOT_TRACK:-1}
exec "$venv/bin/fivetran" "$@"
