"""The control plane's route table, and nothing else."""

from __future__ import annotations

from starlette.routing import Route

from gateway.controlplane import (
    admins,
    api_keys,
    api_sources,
    audit,
    audit_ingest,
    audit_integrity,
    broker,
    credentials,
    dataplane,
    health,
    oauth_users,
    opa,
    openapi,
    policies,
    replay,
    servers,
    session_events,
    status,
)
from gateway.controlplane.console import console_mount

__all__ = ["mounts", "routes"]

routes = [
    # the OpenAPI 3.1 description of everything below (no token: it holds no data)
    Route(openapi.OPENAPI_PATH, openapi.get_openapi, methods=["GET"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
    # per-user OAuth connect (no token: the single-use handle with the browser's cookie, then the
    # OAuth state with the same cookie, is the bearer)
    Route("/v1/oauth/connect/{handle}", oauth_users.connect_page, methods=["GET"]),
    Route("/v1/oauth/connect/{handle}", oauth_users.connect, methods=["POST"]),
    Route(oauth_users.CALLBACK_PREFIX + "{key}", oauth_users.callback, methods=["GET"]),
    # admin API (bearer admin_token)
    Route("/v1/control-plane/scope", status.get_scope, methods=["GET"]),
    Route("/v1/admin/whoami", admins.whoami, methods=["GET"]),
    Route("/v1/admin/roles", admins.list_grants, methods=["GET"]),
    Route("/v1/admin/roles", admins.create_grant, methods=["POST"]),
    Route("/v1/admin/roles/{id}", admins.delete_grant, methods=["DELETE"]),
    Route("/v1/audit/control-plane", audit.list_control_plane, methods=["GET"]),
    Route("/v1/servers", servers.list_servers, methods=["GET"]),
    Route("/v1/servers", servers.create_server, methods=["POST"]),
    Route("/v1/servers/{name}", servers.get_server, methods=["GET"]),
    Route("/v1/servers/{name}/approve", servers.approve_server, methods=["POST"]),
    Route("/v1/servers/{name}/drift", servers.get_server_drift, methods=["GET"]),
    Route("/v1/api-sources", api_sources.list_api_sources, methods=["GET"]),
    Route("/v1/api-sources", api_sources.create_api_source, methods=["POST"]),
    Route("/v1/api-sources/{name}", api_sources.get_api_source, methods=["GET"]),
    Route("/v1/api-sources/{name}/approve", api_sources.approve_api_source, methods=["POST"]),
    Route("/v1/policies", policies.list_policies, methods=["GET"]),
    Route("/v1/policies", policies.create_policy, methods=["POST"]),
    Route("/v1/policies/{version}", policies.get_policy, methods=["GET"]),
    Route("/v1/policies/{version}/approve", policies.approve_policy, methods=["POST"]),
    Route("/v1/policies/{a}/diff/{b}", policies.diff_policies, methods=["GET"]),
    Route("/v1/policies/{version}/replay", replay.start_replay, methods=["POST"]),
    Route("/v1/policies/{version}/replays", replay.list_replays, methods=["GET"]),
    Route("/v1/policies/{version}/replays/{id}", replay.get_replay, methods=["GET"]),
    Route("/v1/projection", status.get_projection_status, methods=["GET"]),
    Route("/v1/audit/decisions", audit.list_decisions, methods=["GET"]),
    Route("/v1/audit/decisions/{decision_id}", audit.get_decision, methods=["GET"]),
    Route("/v1/audit/stats", audit.stats, methods=["GET"]),
    Route("/v1/audit/export", audit.export, methods=["GET"]),
    Route("/v1/audit/verify", audit_integrity.verify, methods=["GET"]),
    Route("/v1/audit/checkpoints", audit_integrity.get_checkpoints, methods=["GET"]),
    Route("/v1/audit/checkpoints", audit_integrity.create_checkpoint, methods=["POST"]),
    Route("/v1/audit/partitions", audit_integrity.get_partitions, methods=["GET"]),
    Route("/v1/audit/retention", audit_integrity.apply_retention, methods=["POST"]),
    Route("/v1/credentials", credentials.list_credentials, methods=["GET"]),
    Route("/v1/credentials", credentials.create_credential, methods=["POST"]),
    Route("/v1/credentials/rewrap", credentials.rewrap_credentials, methods=["POST"]),
    Route("/v1/credentials/{id}", credentials.get_credential, methods=["GET"]),
    Route("/v1/credentials/{id}", credentials.revoke_credential, methods=["DELETE"]),
    Route("/v1/credentials/{id}/rotate", credentials.rotate_credential, methods=["POST"]),
    Route("/v1/credentials/{id}/uses", credentials.list_uses, methods=["GET"]),
    Route("/v1/credential-bindings", credentials.list_bindings, methods=["GET"]),
    Route("/v1/credential-bindings", credentials.create_binding, methods=["POST"]),
    Route("/v1/credential-bindings/{id}", credentials.delete_binding, methods=["DELETE"]),
    Route("/v1/api-keys", api_keys.list_api_keys, methods=["GET"]),
    Route("/v1/api-keys", api_keys.create_api_key, methods=["POST"]),
    Route("/v1/api-keys/{id}", api_keys.revoke_api_key, methods=["DELETE"]),
    # internal API (bearer internal_token): OPA sidecars and data planes
    Route("/v1/opa/bundles/{name:path}", opa.get_bundle, methods=["GET"]),
    Route("/v1/opa/status", opa.post_status, methods=["POST"]),
    Route("/v1/opa/logs", opa.post_decision_logs, methods=["POST"]),
    Route("/v1/dataplane/projection", dataplane.get_projection_feed, methods=["GET"]),
    Route("/v1/dataplane/credentials/resolve", broker.resolve_credential, methods=["POST"]),
    Route("/v1/dataplane/session-events", session_events.get_session_events, methods=["GET"]),
    Route("/v1/dataplane/session-events", session_events.post_session_events, methods=["POST"]),
    Route("/v1/audit/events", audit_ingest.ingest_events, methods=["POST"]),
]
"""Every control-plane route; ``middleware.auth`` decides public, admin or internal by path.
``gateway.controlplane.openapi`` describes each one (a test keeps them in step)."""

mounts = [console_mount]
"""Served after :data:`routes`, described by no OpenAPI entry: the web console (HTML pages with
their own session auth, ``gateway.controlplane.console``)."""
