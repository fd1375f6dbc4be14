#!/usr/bin/env bash
# Ensure Debian's headless-capable Chromium for the console's browser tests (tests/console,
# Playwright drives it through executable_path; Playwright never downloads a browser here:
# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1). Prints the browser's path as the LAST line of stdout.
#
#  * CHROMIUM set and executable -> just check it runs.
#  * else /usr/bin/chromium present -> done.
#  * else, as root with apt-get: apt-get install chromium (Debian's package), then check.
#
# Idempotent; a no-op (well under a second) when Chromium is already installed.
set -euo pipefail

log() { echo "ensure-chromium: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
  [ "$CHROMIUM" = /usr/bin/chromium ] || die "CHROMIUM=$CHROMIUM is not executable"
  command -v apt-get >/dev/null 2>&1 || die "no $CHROMIUM and no apt-get: install Chromium and set CHROMIUM"
  [ "$(id -u)" = 0 ] || die "no $CHROMIUM: run as root (apt-get install chromium) or set CHROMIUM"
  log "installing Debian's chromium package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
  [ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM is missing"
fi

# The Debian launcher is a shell script; ask the browser itself for its version.
version="$("$CHROMIUM" --headless --no-sandbox --version 2>/dev/null | tail -n1 || true)"
[ -n "$version" ] || die "$CHROMIUM does not run"
log "$version"
echo "$CHROMIUM"
