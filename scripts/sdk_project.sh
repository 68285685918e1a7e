#!/usr/bin/env bash
# Lay out the Connector SDK project: connector.py, lambda_function.py and requirements.txt
# (the same pinned runtime packages as the Lambda zip), and nothing else.
#
# Usage: scripts/sdk_project.sh [DIR]     (default: build/sdk)
#   configuration.json is copied there once (then yours to edit); REDSHIFT_LAMBDA_<SETTING>
#   variables, if set, are written into it (an empty one removes the setting)
#   then: cd DIR && ../../scripts/sdk.sh debug --configuration configuration.json
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
# REDSHIFT_LAMBDA_<SETTING> variables (as for the command line, e.g. the export line that
# ./demo.sh --serve prints) go into configuration.json; an empty one removes the setting.
if [[ -n "$(compgen -e | grep '^REDSHIFT_LAMBDA_' || true)" ]]; then
  python3 - "$dir/configuration.json" <<'PY' || die "cannot update $dir/configuration.json"
import json, os, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as f:
    configuration = json.load(f)
names = []
for name, value in sorted(os.environ.items()):
    key = name[len("REDSHIFT_LAMBDA_"):].lower()
    if not name.startswith("REDSHIFT_LAMBDA_") or key in ("aws_endpoint_url", "s3_endpoint_url", "tests_without_tls"):
        continue
    if value:
        configuration[key] = value
    else:
        configuration.pop(key, None)
    names.append(key)
with open(path, "w", encoding="utf-8") as f:
    json.dump(configuration, f, indent=2)
    f.write("\n")
print(f"sdk_project.sh: configuration.json: {', '.join(names)} from REDSHIFT_LAMBDA_* variables", file=sys.stderr)
PY
fi
echo "$dir"
