#!/usr/bin/env bash
# Validate the deploy artefacts offline with the pinned tools of ensure-deploy-tools.sh:
#   1. the OPA image tags (chart, Dockerfile, compose) are the Makefile's OPA_VERSION
#   2. helm lint --strict, for each deploy/helm/mcp-opa-gateway/ci/*-values.yaml
#   3. helm template | kubeconform -strict against the Kubernetes $K8S_VERSION schemas; a kind
#      without a schema is an error, except SKIP_KINDS (ServiceMonitor: a Prometheus Operator
#      CRD, no schema of it ships with the Kubernetes ones)
#   4. dockerfile-lint Dockerfile (BuildKit's `docker build --check` rules + pinning/non-root)
#   5. compose-validate deploy/compose.yaml (Compose Specification schema + compose-go's checks)
# The structural assertions on the rendered chart and the compose file are in
# tests/deploy/test_deploy_artifacts.py. Env: TOOLS, OPA_VERSION.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${TOOLS:-$ROOT/.tools/bin}"
OPA_VERSION="${OPA_VERSION:-v1.22.2}"
SCHEMAS="${K8S_SCHEMAS:-$ROOT/.tools/k8s-schemas}"
CHART="$ROOT/deploy/helm/mcp-opa-gateway"
SKIP_KINDS="ServiceMonitor"

for tool in helm kubeconform dockerfile-lint compose-validate; do
  [ -x "$TOOLS/$tool" ] || { echo "deploy-check: $TOOLS/$tool missing: run deploy/scripts/ensure-deploy-tools.sh" >&2; exit 1; }
done
[ -s "$SCHEMAS/kubernetes-version" ] || { echo "deploy-check: no Kubernetes schemas in $SCHEMAS" >&2; exit 1; }
K8S_VERSION="$(cat "$SCHEMAS/kubernetes-version")"

step() { echo "deploy-check: $*" >&2; }

opa_tag="${OPA_VERSION#v}-static"
step "OPA image tag $opa_tag (OPA_VERSION $OPA_VERSION) in the chart, the Dockerfile and compose"
grep -qE "^    tag: ${opa_tag//./\\.}\$" "$CHART/values.yaml" || { echo "values.yaml opa.image.tag is not $opa_tag" >&2; exit 1; }
grep -qE "^FROM openpolicyagent/opa:${opa_tag//./\\.} AS opa\$" "$ROOT/Dockerfile" || { echo "Dockerfile: no FROM openpolicyagent/opa:$opa_tag" >&2; exit 1; }
grep -qE "image: openpolicyagent/opa:${opa_tag//./\\.}\$" "$ROOT/deploy/compose.yaml" || { echo "compose.yaml: no openpolicyagent/opa:$opa_tag" >&2; exit 1; }

location="$SCHEMAS/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
for values in "$CHART"/ci/*-values.yaml; do
  name="$(basename "$values")"
  step "helm lint --strict ($name)"
  "$TOOLS/helm" lint --strict "$CHART" -f "$values" --kube-version "$K8S_VERSION" >&2
  step "helm template | kubeconform -strict, Kubernetes $K8S_VERSION ($name; skipped kinds: $SKIP_KINDS)"
  "$TOOLS/helm" template gateway "$CHART" --namespace gateway --kube-version "$K8S_VERSION" -f "$values" \
    | "$TOOLS/kubeconform" -strict -summary -kubernetes-version "$K8S_VERSION" \
        -schema-location "$location" -skip "$SKIP_KINDS" -
done

step "dockerfile-lint Dockerfile"
"$TOOLS/dockerfile-lint" "$ROOT/Dockerfile"

step "compose-validate deploy/compose.yaml"
"$TOOLS/compose-validate" "$ROOT/deploy/compose.yaml"
echo "deploy-check: ok" >&2
