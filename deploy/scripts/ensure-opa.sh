#!/usr/bin/env bash
# Ensure the pinned OPA binary is present at $OPA (default .tools/bin/opa).
# Installs with `go install` only when `$OPA version` does not report the pin.
#
# Env: OPA_VERSION (e.g. v1.22.2), TOOLS (GOBIN dir), OPA (binary path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OPA_VERSION="${OPA_VERSION:-v1.22.2}"
TOOLS="${TOOLS:-$ROOT/.tools/bin}"
OPA="${OPA:-$TOOLS/opa}"
want="${OPA_VERSION#v}"

log() { echo "ensure-opa: $*" >&2; }

have_pinned() {
  [ -x "$1" ] || return 1
  # Capture first: with pipefail, `opa version | grep -q` fails whenever grep exits before
  # opa has written everything (opa then dies of SIGPIPE), which happens under load.
  local out
  out="$("$1" version 2>/dev/null)" || return 1
  grep -qE "^Version: ${want//./\\.}\$" <<<"$out"
}

if have_pinned "$OPA"; then
  log "$OPA is OPA $want"
  exit 0
fi

# shellcheck source=deploy/scripts/go-tools.sh
. "$ROOT/deploy/scripts/go-tools.sh"  # GO, go_fetching
if [ -z "$GO" ]; then
  log "ERROR: OPA $want not found at $OPA and no 'go' toolchain on PATH to build it"
  exit 1
fi

mkdir -p "$TOOLS"
pkg="github.com/open-policy-agent/opa@$OPA_VERSION"
log "installing $pkg into $TOOLS (this takes a few minutes)"
if ! go_fetching install "$pkg"; then
  log "ERROR: go install $pkg failed (see output above)"
  exit 1
fi

if ! have_pinned "$OPA"; then
  log "ERROR: after install, $OPA does not report version $want:"
  "$OPA" version >&2 || true
  exit 1
fi
log "installed OPA $want at $OPA"
