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

GO="$(command -v go || true)"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
if [ -z "$GO" ]; then
  log "ERROR: OPA $want not found at $OPA and no 'go' toolchain on PATH to build it"
  exit 1
fi

mkdir -p "$TOOLS"
logfile="$(mktemp "${TMPDIR:-/tmp}/ensure-opa.XXXXXX")"
trap 'rm -f "$logfile"' EXIT
pkg="github.com/open-policy-agent/opa@$OPA_VERSION"
log "installing $pkg into $TOOLS (this takes a few minutes)"

if ! GOBIN="$TOOLS" "$GO" install "$pkg" 2>&1 | tee "$logfile" >&2; then
  # Retry without checksum verification ONLY when the failure is that the Go
  # checksum database (sum.golang.org by default) could not be reached, e.g. in
  # a sandbox whose egress allows the module proxy but not the sumdb host.
  # A checksum *mismatch* ("SECURITY ERROR") is never retried.
  sumdb="$("$GO" env GOSUMDB 2>/dev/null | awk '{print $1}' | sed 's/+.*//')"
  sumdb="${sumdb:-sum.golang.org}"
  if ! grep -q 'SECURITY ERROR' "$logfile" \
     && grep -qE "(${sumdb//./\\.}|checksum database)" "$logfile" \
     && grep -qiE 'dial tcp|no such host|i/o timeout|timeout|connection refused|connection reset|TLS handshake|network is unreachable|proxyconnect|(502|503|504) ' "$logfile"; then
    log "checksum database $sumdb unreachable; retrying once with GOSUMDB=off (module proxy content only)"
    GOSUMDB=off GOBIN="$TOOLS" "$GO" install "$pkg" >&2
  else
    log "ERROR: go install $pkg failed (see output above)"
    exit 1
  fi
fi

if ! have_pinned "$OPA"; then
  log "ERROR: after install, $OPA does not report version $want:"
  "$OPA" version >&2 || true
  exit 1
fi
log "installed OPA $want at $OPA"
