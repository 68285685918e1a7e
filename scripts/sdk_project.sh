#!/usr/bin/env bash
# Lay out the Connector SDK project: connector.py, lambda_function.py and requirements.txt
# (the same pinned runtime packages as the Lambda zip), and nothing else.
#
# Usage: scripts/sdk_project.sh [DIR]     (default: build/sdk)
#   then: cd DIR && fivetran debug --configuration configuration.json
#         cd DIR && fivetran deploy --api-key ... --destination ... --connection ... \
#                     --configuration configuration.json
#
# Why a separate directory: the repository root holds a pyproject.toml (tool settings only),
# and the SDK takes a pyproject.toml's [project] dependencies over requirements.txt, so a deploy
# from the root would install no pg8000; it would also upload the tests and benchmarks.
set -euo pipefail

die() { echo "sdk_project.sh: error: $*" >&2; exit 1; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/build/sdk}
[[ $# -le 1 ]] || die "at most one argument, the directory (see the header of this script)"
mkdir -p "$dir"
for f in connector.py lambda_function.py requirements.txt; do
  cp "$root/$f" "$dir/$f"
done
if [[ ! -e "$dir/configuration.json" ]]; then
  cp "$root/configuration.json" "$dir/configuration.json"
fi
echo "$dir"
