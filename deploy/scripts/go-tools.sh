#!/usr/bin/env bash
# Sourced (not run) by the ensure-*.sh scripts that install or build Go tools:
#
#   GO            the go toolchain: `go` on PATH, else /usr/local/go/bin/go, else empty
#   go_fetching   `go <args>` with GOBIN=$TOOLS, retried once with GOSUMDB=off only when the
#                 checksum database could not be reached (never on a checksum mismatch)
#
# The caller defines log() and TOOLS before calling go_fetching.

GO="$(command -v go || true)"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi

# `go <args>` (install or build, from the current directory). A sandbox whose egress allows the
# module proxy but not the checksum database (sum.golang.org by default) fails only because the
# database is unreachable: that one failure is retried without it, so modules are then checked
# against go.sum (where there is one) and the proxy only. A "SECURITY ERROR" (a checksum
# mismatch) is never retried.
go_fetching() { # <go subcommand and arguments...>
  local logfile rc=0
  logfile="$(mktemp "${TMPDIR:-/tmp}/go-fetching.XXXXXX")"
  # go's own status, with or without the caller's pipefail (and never an exit under set -e)
  { GOBIN="$TOOLS" "$GO" "$@" 2>&1 | tee "$logfile" >&2; rc=${PIPESTATUS[0]}; } || true
  if [ "$rc" -ne 0 ]; then
    local sumdb
    sumdb="$("$GO" env GOSUMDB 2>/dev/null | awk '{print $1}' | sed 's/+.*//')"
    sumdb="${sumdb:-sum.golang.org}"
    if ! grep -q 'SECURITY ERROR' "$logfile" \
       && grep -qE "(${sumdb//./\\.}|checksum database)" "$logfile" \
       && grep -qiE 'dial tcp|no such host|i/o timeout|timeout|connection refused|connection reset|TLS handshake|network is unreachable|proxyconnect|(502|503|504) ' "$logfile"; then
      log "checksum database $sumdb unreachable; retrying once with GOSUMDB=off (module proxy content only)"
      rc=0
      GOSUMDB=off GOBIN="$TOOLS" "$GO" "$@" >&2 || rc=$?
    fi
  fi
  rm -f "$logfile"
  return "$rc"
}
