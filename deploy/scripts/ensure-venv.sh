#!/usr/bin/env bash
# Create .venv (if missing) and install the project with dev extras.
# The Makefile calls this only when pyproject.toml is newer than .venv/.installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"

log() { echo "ensure-venv: $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  if ! "$PYTHON" -m venv "$VENV"; then
    rm -rf "$VENV"
    # Debian ships ensurepip separately (python3.X-venv).
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      log "python venv support missing; installing python${pyver}-venv via apt"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2
      apt-get install -y -qq "python${pyver}-venv" >&2 || apt-get install -y -qq python3-venv >&2
      "$PYTHON" -m venv "$VENV"
    else
      log "ERROR: '$PYTHON -m venv' failed; install the python3-venv package"
      exit 1
    fi
  fi
fi

"$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >&2 || true
"$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]' >&2
touch "$VENV/.installed"
log "venv ready: $VENV"
