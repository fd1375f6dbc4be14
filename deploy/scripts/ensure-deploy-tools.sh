#!/usr/bin/env bash
# Ensure the pinned deploy validators are present in $TOOLS (default .tools/bin):
#
#   helm             helm.sh/helm/v3/cmd/helm@HELM_VERSION              (helm lint, helm template)
#   kubeconform      github.com/yannh/kubeconform/cmd/kubeconform@...   (manifests vs Kubernetes JSON schemas)
#   dockerfile-lint  deploy/lint/dockerfile (BuildKit's Dockerfile linter, the checks of `docker build --check`)
#   compose-validate deploy/lint/compose   (compose-go's loader + the Compose Specification JSON schema)
#   k8s schemas      the Kubernetes K8S_VERSION JSON schemas shipped in the wheel of PyPI's
#                    kubernetes-validate==K8S_SCHEMAS_PKG_VERSION, unpacked into .tools/k8s-schemas
#                    (kubeconform's default schema source is GitHub, which is not reachable here)
#
# Each tool is (re)built only when it does not match its pin (`go version -m` for the go-installed
# ones, a stamp <tool>.version of the source's hash for ours), so a second run does nothing. Go modules come from the Go module proxy; the schemas come from
# PyPI with pip (no other network).
#
# Env: TOOLS (GOBIN dir), PYTHON (for pip), HELM_VERSION, KUBECONFORM_VERSION, K8S_SCHEMAS_PKG_VERSION,
#      K8S_VERSION (the Kubernetes version validated against, e.g. 1.33.0), K8S_SCHEMAS (their dir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${TOOLS:-$ROOT/.tools/bin}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBECONFORM_VERSION="${KUBECONFORM_VERSION:-v0.7.0}"
K8S_SCHEMAS_PKG_VERSION="${K8S_SCHEMAS_PKG_VERSION:-1.37.0}"
K8S_VERSION="${K8S_VERSION:-1.33.0}"
SCHEMAS="${K8S_SCHEMAS:-$ROOT/.tools/k8s-schemas}"
PY="${PYTHON:-python3}"
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi

log() { echo "ensure-deploy-tools: $*" >&2; }

# shellcheck source=deploy/scripts/go-tools.sh
. "$ROOT/deploy/scripts/go-tools.sh"  # GO, go_fetching

stamp_ok() { # <binary> <pin>: the binary exists and its stamp names the pin
  [ -x "$1" ] && [ -f "$1.version" ] && [ "$(cat "$1.version")" = "$2" ]
}

need_go() {
  if [ -z "$GO" ]; then
    log "ERROR: $1 is missing and there is no 'go' toolchain on PATH to build it"
    exit 1
  fi
}

# The module version a Go binary was built from (`go version -m`: "mod <path> <version> <sum>").
built_version() { # <binary> <module path>
  "$GO" version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m {print $3}'
}

ensure_module_tool() { # <name> <module path> <package path> <version>
  local name="$1" mod="$2" pkg="$3" version="$4" bin="$TOOLS/$1"
  if [ -x "$bin" ] && [ -n "$GO" ] && [ "$(built_version "$bin" "$mod")" = "$version" ]; then
    log "$name $version present"
    return
  fi
  need_go "$name"
  mkdir -p "$TOOLS"
  local t0=$SECONDS
  log "installing $pkg@$version into $TOOLS (a cold build of helm takes several minutes)"
  (cd "$ROOT" && go_fetching install -trimpath "$pkg@$version") || { log "ERROR: go install $pkg@$version failed"; exit 1; }
  if [ "$(built_version "$bin" "$mod")" != "$version" ]; then
    log "ERROR: $bin was not built from $mod $version"
    exit 1
  fi
  log "installed $name $version in $((SECONDS - t0)) s"
}

ensure_local_tool() { # <name> <dir under deploy/lint>: a pinned go.mod/go.sum of our own
  local name="$1" dir="$ROOT/deploy/lint/$2" bin="$TOOLS/$1" pin
  # The pin is the module's go.sum and source: a change to either rebuilds the tool.
  pin="$(cat "$dir/go.mod" "$dir/go.sum" "$dir"/*.go | sha256sum | cut -c1-16)"
  if stamp_ok "$bin" "$pin"; then
    log "$name ($pin) present"
    return
  fi
  need_go "$name"
  mkdir -p "$TOOLS"
  local t0=$SECONDS
  log "building $name from deploy/lint/$2"
  (cd "$dir" && go_fetching build -trimpath -o "$bin" .) || { log "ERROR: building $name failed"; exit 1; }
  echo "$pin" >"$bin.version"
  log "built $name in $((SECONDS - t0)) s"
}

ensure_schemas() {
  local stamp="$SCHEMAS/.version" want="kubernetes-validate $K8S_SCHEMAS_PKG_VERSION, Kubernetes $K8S_VERSION"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "Kubernetes schemas ($want) present"
    return
  fi
  local tmp
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/k8s-schemas.XXXXXX")"
  log "downloading kubernetes-validate==$K8S_SCHEMAS_PKG_VERSION from PyPI (its wheel ships the Kubernetes JSON schemas)"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "kubernetes-validate==$K8S_SCHEMAS_PKG_VERSION" >&2
  rm -rf "$SCHEMAS"
  mkdir -p "$SCHEMAS"
  # Unpack v<K8S_VERSION>-local[-strict]/*.json. Those schemas carry an "$id" under kubernetes.io
  # and refer to "/api/_definitions.json#/$defs/...", which kubernetes-validate resolves with its
  # own registry; kubeconform compiles one file per kind, so the "$id" is dropped and the
  # references made relative ("_definitions.json#/$defs/..."): the same schemas, read from disk.
  "$PY" - "$tmp"/kubernetes_validate-*.whl "$SCHEMAS" "v$K8S_VERSION" <<'EOF'
import json
import sys
import zipfile
from pathlib import Path

wheel, dest, version = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
prefix = "kubernetes_validate/kubernetes-json-schema/"
wanted = (f"{prefix}{version}-local/", f"{prefix}{version}-local-strict/")


def relative_refs(node):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("/api/_definitions.json#"):
            node["$ref"] = ref[len("/api/") :]
        for value in node.values():
            relative_refs(value)
    elif isinstance(node, list):
        for value in node:
            relative_refs(value)


n = 0
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(wanted) and name.endswith(".json"):
            doc = json.loads(zf.read(name))
            doc.pop("$id", None)
            relative_refs(doc)
            target = dest / name[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(doc))
            n += 1
if n == 0:
    sys.exit(f"kubernetes-validate {wheel} has no {version} schemas")
print(f"unpacked {n} schema files for Kubernetes {version}", file=sys.stderr)
EOF
  rm -rf "$tmp"
  echo "$K8S_VERSION" >"$SCHEMAS/kubernetes-version"
  echo "$want" >"$stamp"
}

ensure_module_tool helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
ensure_module_tool kubeconform github.com/yannh/kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
ensure_local_tool dockerfile-lint dockerfile
ensure_local_tool compose-validate compose
ensure_schemas
