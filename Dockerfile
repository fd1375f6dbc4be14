# syntax=docker/dockerfile:1.12
# check=error=true;experimental=all
#
# The MCP OPA gateway: one image for both planes (GATEWAY_PLANE=control|data|both), run as
# `gateway serve`. Stages:
#   opa    the pinned OPA binary (= the Makefile's OPA_VERSION): the control plane checks,
#          tests and replays uploaded policies with it. A data plane in Kubernetes asks the
#          openpolicyagent/opa sidecar container instead (GATEWAY_OPA_MANAGE=false); with
#          GATEWAY_OPA_MANAGE=true (compose, a single container) it supervises this binary.
#   build  builds the gateway wheel and the wheels of its dependencies (pip, setuptools).
#   final  a venv with those wheels only (no compiler, no pip in the venv), numeric non-root UID.
# The embedded decision engine (libopa-embedded.so, Go + cgo) is not built into the image: it
# stays on the sidecar engine (GATEWAY_DECISION_ENGINE=sidecar, the default).
#
# Build: docker build -t mcp-opa-gateway:0.1.0 .
# Lint:  make deploy-check (BuildKit's Dockerfile rules, offline: deploy/lint/dockerfile)

# opa provides the OPA binary pinned by the Makefile (OPA_VERSION v1.22.2)
FROM openpolicyagent/opa:1.22.2-static AS opa

# build makes the wheels: the gateway's and its dependencies'
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m pip wheel --wheel-dir /wheels .

# final is the runtime image: a venv of those wheels, run as UID 10001
FROM python:3.11.14-slim-bookworm AS final
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPA_BIN=/usr/local/bin/opa \
    GATEWAY_RUN_DIR=/var/lib/gateway/run \
    GATEWAY_AUDIT_SPOOL_DIR=/var/lib/gateway/audit-spool \
    GATEWAY_CONTROL_HOST=0.0.0.0 \
    GATEWAY_DATA_HOST=0.0.0.0 \
    TMPDIR=/tmp
COPY --from=opa /opa /usr/local/bin/opa
# The venv gets the wheels and nothing else; the bytecode is compiled now, since the root
# filesystem is read-only at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-index --no-cache-dir \
       --find-links /wheels mcp-opa-gateway \
    && install -d -m 0700 -o 10001 -g 10001 \
       /var/lib/gateway /var/lib/gateway/run /var/lib/gateway/audit-spool \
    && opa version >/dev/null && gateway --help >/dev/null
WORKDIR /var/lib/gateway
USER 10001:10001
# 8080 control plane (admin API, bundles, projection feed); 8081 data plane (MCP).
EXPOSE 8080 8081
ENTRYPOINT ["gateway", "serve"]
