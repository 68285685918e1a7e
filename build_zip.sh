#!/usr/bin/env bash
# Build the AWS Lambda deployment zip (Python runtime) for redshift-lambda.
#
# Usage: ./build_zip.sh [--arch x86_64|arm64] [--python 3.12|3.13|3.14] [--output PATH]
#
#   --arch     Lambda architecture (default: x86_64)
#   --python   Lambda Python runtime version the wheels are selected for (default: 3.12)
#   --output   zip to write (default: dist/redshift-lambda-<arch>.zip, next to this script;
#              a relative PATH is taken relative to the current directory)
#
# The zip holds lambda_function.py at its root plus the pinned packages of requirements.txt
# (with their *.dist-info; pg8000 reads its version from metadata), and nothing else.
# It is reproducible: sorted entries, fixed permissions, fixed timestamps taken from
# SOURCE_DATE_EPOCH (default: commit time of HEAD, or 1980-01-01 outside a git checkout).
# Environment: PYTHON (default python3) is the interpreter whose pip does the install.
set -euo pipefail

die() { echo "build_zip.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

arch=x86_64
pyver=3.12
output=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --arch) [[ $# -ge 2 ]] || die "--arch needs a value"; arch=$2; shift 2 ;;
    --python) [[ $# -ge 2 ]] || die "--python needs a value"; pyver=$2; shift 2 ;;
    --output) [[ $# -ge 2 ]] || die "--output needs a value"; output=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

case "$arch" in
  x86_64) platform=manylinux2014_x86_64 ;;
  arm64) platform=manylinux2014_aarch64 ;;
  *) die "--arch must be x86_64 or arm64, not '$arch'" ;;
esac
case "$pyver" in
  3.12|3.13|3.14) ;;
  *) die "--python must be 3.12, 3.13 or 3.14, not '$pyver'" ;;
esac
if [[ -n "$output" && "$output" != /* ]]; then
  output="${PWD%/}/$output"
fi

cd "$(dirname "${BASH_SOURCE[0]}")"
: "${output:=$PWD/dist/redshift-lambda-$arch.zip}"
[[ -f lambda_function.py ]] || die "lambda_function.py not found in $PWD"
[[ -f requirements.txt ]] || die "requirements.txt not found in $PWD"

python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "python interpreter '$python' not found"

if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH=315532800
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800)
  fi
fi
[[ "$SOURCE_DATE_EPOCH" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be an integer"
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
staging="$work/staging"
mkdir -p "$staging"

# Every dependency is pinned in requirements.txt and ships as a pure-Python wheel.
PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check \
  --no-compile --no-deps --only-binary=:all: --platform "$platform" --implementation cp \
  --python-version "$pyver" --target "$staging" -r requirements.txt \
  || die "pip install of requirements.txt failed"
rm -rf "${staging:?}/bin"
find "$staging" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$staging" -name '*.py[co]' -type f -delete
cp lambda_function.py "$staging/lambda_function.py"

stats=$("$python" - "$staging" "$work/out.zip" <<'PY'
import hashlib
import os
import sys
import time
import zipfile

root, dest = sys.argv[1], sys.argv[2]
epoch = max(int(os.environ["SOURCE_DATE_EPOCH"]), 315532800)  # zip dates start in 1980
stamp = time.gmtime(epoch)[:6]
entries = []
for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
    prefix = "" if rel == "." else rel + "/"
    if prefix:
        entries.append((prefix, None))
    entries.extend((prefix + name, os.path.join(dirpath, name)) for name in filenames)
unzipped = 0
with zipfile.ZipFile(dest, "w") as zf:
    for name, path in sorted(entries):
        info = zipfile.ZipInfo(name, date_time=stamp)
        info.create_system = 3  # Unix, so external_attr carries the mode bits
        if path is None:
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")
            continue
        if os.path.islink(path):
            sys.exit(f"refusing to zip a symlink: {name}")
        with open(path, "rb") as fh:
            data = fh.read()
        unzipped += len(data)
        info.external_attr = 0o100644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, data, compresslevel=9)
with open(dest, "rb") as fh:
    digest = hashlib.sha256(fh.read()).hexdigest()
print(os.path.getsize(dest), unzipped, digest)
PY
) || die "creating the zip failed"
read -r zipped unzipped sha256 <<<"$stats"

(( zipped <= 50 * 1024 * 1024 )) || die "zip is $zipped bytes, over Lambda's 50 MB limit"
(( unzipped <= 250 * 1024 * 1024 )) || die "unzipped size is $unzipped bytes, over 250 MB"

mkdir -p "$(dirname "$output")"
mv -f "$work/out.zip" "$output"
echo "zip:      $output"
echo "size:     $zipped bytes"
echo "unzipped: $unzipped bytes"
echo "sha256:   $sha256"
