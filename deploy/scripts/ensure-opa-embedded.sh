#!/usr/bin/env bash
# Ensure the embedded OPA engine (deploy/opa/embedded, the pinned OPA's SDK built with
# -buildmode=c-shared) at $OPA_EMBEDDED_LIB (default .tools/lib/libopa-embedded.so).
# Rebuilds only when the sources, the pin or the Go toolchain changed (a stamp next to the
# library records their hash). Needs go and a C compiler (cgo); the first build takes about two
# minutes on two cores, a rebuild seconds.
#
# Env: OPA_VERSION (the Makefile's pin; deploy/opa/embedded/go.mod must require the same),
#      OPA_EMBEDDED_LIB (output path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SRC="$ROOT/deploy/opa/embedded"
OPA_VERSION="${OPA_VERSION:-v1.22.2}"
LIB="${OPA_EMBEDDED_LIB:-$ROOT/.tools/lib/libopa-embedded.so}"

log() { echo "ensure-opa-embedded: $*" >&2; }

pinned="$(awk '$1 == "require" && $2 == "github.com/open-policy-agent/opa" {print $3}' "$SRC/go.mod")"
if [ "$pinned" != "$OPA_VERSION" ]; then
  log "ERROR: $SRC/go.mod requires OPA $pinned but the Makefile pins $OPA_VERSION: update go.mod (go get github.com/open-policy-agent/opa@$OPA_VERSION && go mod tidy)"
  exit 1
fi

# shellcheck source=deploy/scripts/go-tools.sh
. "$ROOT/deploy/scripts/go-tools.sh"  # GO
if [ -z "$GO" ]; then
  log "ERROR: no 'go' toolchain on PATH to build the embedded OPA engine"
  exit 1
fi
if ! command -v "${CC:-gcc}" >/dev/null 2>&1; then
  log "ERROR: cgo needs a C compiler (${CC:-gcc}); on Debian: apt-get install gcc"
  exit 1
fi

stamp="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" <("$GO" version) | sha256sum | cut -d' ' -f1)"
if [ -f "$LIB" ] && [ "$(cat "$LIB.stamp" 2>/dev/null)" = "$stamp" ]; then
  log "$LIB is current (OPA $OPA_VERSION)"
  exit 0
fi

mkdir -p "$(dirname "$LIB")"
log "building the embedded OPA engine (OPA $OPA_VERSION, c-shared) into $LIB"
build() { (cd "$SRC" && CGO_ENABLED=1 "$GO" build -buildmode=c-shared -trimpath -ldflags="-s -w" -o "$LIB.tmp" .); }
logfile="$(mktemp "${TMPDIR:-/tmp}/ensure-opa-embedded.XXXXXX")"
trap 'rm -f "$logfile" "$LIB.tmp" "$LIB.tmp.h" "$LIB.h"' EXIT
if ! build 2>&1 | tee "$logfile" >&2; then
  # As ensure-opa.sh: retry without the checksum database only when it was unreachable (never
  # on a mismatch); go.sum still pins every module's hash.
  if ! grep -q 'SECURITY ERROR' "$logfile" && grep -qiE 'sum\.golang\.org|checksum database' "$logfile" \
     && grep -qiE 'dial tcp|no such host|i/o timeout|timeout|connection refused|connection reset|TLS handshake|network is unreachable|proxyconnect' "$logfile"; then
    log "checksum database unreachable; retrying once with GOSUMDB=off (go.sum still verifies)"
    GOSUMDB=off build >&2
  else
    log "ERROR: building the embedded OPA engine failed (see output above)"
    exit 1
  fi
fi
mv "$LIB.tmp" "$LIB"
echo "$stamp" > "$LIB.stamp"
log "built $LIB"
