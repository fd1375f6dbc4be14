"""The control plane's OpenAPI 3.1 description, served at ``GET /v1/openapi.json`` (no token needed).

Built once from the dicts below and encoded once; the handler returns the same
bytes every time. Every route of :mod:`gateway.controlplane.routes` is described
(``tests/controlplane/test_openapi.py`` keeps the two in step). The internal API
(OPA sidecars and data planes, internal token) is tagged ``internal`` and marked
``x-internal: true``; the admin API is tagged by resource.

Source: OpenAPI Specification 3.1.0 (https://spec.openapis.org/oas/v3.1.0), whose
schemas are JSON Schema 2020-12.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._http import MAX_BIGINT, MAX_JSON_BODY, MAX_TEXT
from gateway.controlplane.actor import ROLES
from gateway.controlplane.replay import DEFAULT_LIMIT as REPLAY_DEFAULT_LIMIT
from gateway.controlplane.replay import MAX_LIMIT as REPLAY_MAX_LIMIT
from gateway.credentials import KINDS

__all__ = ["OPENAPI_PATH", "get_openapi", "openapi_document"]

OPENAPI_PATH = "/v1/openapi.json"
"""Where the document is served; the auth middleware lets it through without a token."""

NO_NUL = "^[^\\u0000]*$"
"""PostgreSQL ``text`` cannot hold U+0000; every free-text parameter refuses it (400)."""
SERVER_NAME = "^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
TIMESTAMP = {"type": "string", "format": "date-time"}
NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
VERSION = {"type": "integer", "minimum": 1, "maximum": MAX_BIGINT}
NULLABLE_VERSION = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_BIGINT}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{description}"}


_PROBE: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "ready", "not_ready"]},
        "reasons": {"type": "array", "items": {"type": "string", "enum": ["database_unavailable"]}},
    },
}
_SESSION_EVENT_IN: dict[str, Any] = {
    "type": "object",
    "required": ["session_ref", "kind", "value", "expires_at"],
    "additionalProperties": False,
    "properties": {
        "session_ref": {"type": "string", "pattern": "^sr-[0-9a-f]{24}$"},
        "kind": {"type": "string", "enum": ["ended", "log_level"]},
        "value": {
            "type": ["string", "null"],
            "enum": [None, "debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"],
        },
        "expires_at": {"type": "integer", "minimum": 1, "maximum": 253402300799, "description": "Unix seconds."},
    },
}
_SESSION_EVENT_OUT: dict[str, Any] = {
    **_SESSION_EVENT_IN,
    "required": ["seq", *_SESSION_EVENT_IN["required"]],
    "properties": {"seq": {"type": "integer", "minimum": 1}, **_SESSION_EVENT_IN["properties"]},
}


def _query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _text(max_length: int = MAX_TEXT) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, "pattern": NO_NUL}


_SERVER_NAME_FIELD = {
    "type": "string",
    "pattern": SERVER_NAME,
    "description": "1-63 of [a-z0-9_-], alphanumeric at both ends, without `__`.",
}


_UUID = {"type": "string", "format": "uuid", "pattern": "^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"}
_CREDENTIAL_NAME = {
    "type": "string",
    "pattern": "^[a-z0-9]([a-z0-9_.-]{0,126}[a-z0-9])?$",
    "description": "1-128 of [a-z0-9_.-], alphanumeric at both ends; unique among live credentials.",
}
_SECRET_TEXT = {"type": "string", "minLength": 1, "maxLength": 8192, "pattern": "^[^\\u0000-\\u001f\\u007f]+$"}
_NAMES = {"type": "array", "items": {"type": "string"}, "description": "Ignored: derived from `secret`."}


def _credential_body(kind: str, description: str, secret: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "required": ["name", "kind", "secret", *(["config"] if config.get("required") else [])],
        "properties": {
            "name": _CREDENTIAL_NAME,
            "kind": {"type": "string", "enum": [kind]},
            "config": config,
            "secret": {**secret, "description": "Write-only: encrypted at rest, never shown again."},
        },
    }


def _secret_map(field: str, names: dict[str, Any], values: dict[str, Any], max_entries: int) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [field],
        "properties": {
            field: {
                "type": "object",
                "minProperties": 1,
                "maxProperties": max_entries,
                "propertyNames": names,
                "additionalProperties": values,
            }
        },
    }


def _oauth_config(exchange: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "token_url": {
            "type": "string",
            "format": "uri",
            "maxLength": 2048,
            "description": "The token endpoint: https (http to loopback only), no userinfo, query or fragment.",
        },
        "client_id": {"type": "string", "minLength": 1, "maxLength": 2048},
        "scope": {"type": ["string", "null"], "maxLength": 2048, "description": "RFC 6749 scope tokens."},
        "audience": {"type": ["string", "null"], "minLength": 1, "maxLength": 2048},
        "auth_method": {
            "type": "string",
            "enum": ["client_secret_basic", "client_secret_post"],
            "default": "client_secret_basic",
            "description": "How the client authenticates to the token endpoint (RFC 6749 section 2.3.1).",
        },
    }
    if exchange:
        properties["requested_token_type"] = {
            "type": ["string", "null"],
            "maxLength": 256,
            "pattern": "^[!-~]+$",
            "description": "RFC 8693 `requested_token_type`, e.g. `urn:ietf:params:oauth:token-type:access_token`.",
        }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["token_url", "client_id"],
        "properties": properties,
    }


_CLIENT_SECRET = {
    "type": "object",
    "additionalProperties": False,
    "required": ["client_secret"],
    "properties": {"client_secret": _SECRET_TEXT},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error body. `error` is a stable snake_case category (gateway/errors.py); "
        "`message` is written for clients and never echoes request data; `request_id` equals `X-Request-Id`.",
        "required": ["error", "message", "request_id"],
        "properties": {
            "error": {"type": "string", "pattern": "^[a-z_]+$"},
            "message": {"type": "string"},
            "request_id": {"type": "string", "format": "uuid"},
            "connect_url": {
                "type": "string",
                "description": "Only with `credential_not_connected`: the caller's connect link.",
            },
            "errors": {
                "type": "array",
                "description": "Only with `policy_rejected`: one entry per problem.",
                "items": {
                    "type": "object",
                    "required": ["file", "message"],
                    "properties": {
                        "file": {"type": "string"},
                        "line": {"type": ["integer", "null"]},
                        "message": {"type": "string"},
                        "code": {"type": ["string", "null"]},
                    },
                },
            },
        },
    },
    "Scope": {
        "type": "object",
        "required": ["tenant", "environment"],
        "properties": {"tenant": {"type": "string"}, "environment": {"type": "string"}},
    },
    "ServerRegistration": {
        "description": "An HTTP upstream (`streamable_http`, or `legacy_sse` = 2024-11-05 HTTP+SSE) has a `url`; "
        "a `stdio` upstream has a `command` (with `args`, `cwd`, `env`) and no `url`. A field of the other kind "
        "is a 400 naming it.",
        "oneOf": [_ref("HttpServerRegistration"), _ref("StdioServerRegistration")],
    },
    "HttpServerRegistration": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "transport", "url"],
        "properties": {
            "requires_credential": {
                "type": "boolean",
                "description": "Every call needs a credential binding (set by the first binding too; docs/credentials.md).",
            },
            "name": _SERVER_NAME_FIELD,
            "transport": {
                "type": "string",
                "enum": ["streamable_http", "legacy_sse"],
                "description": "`streamable_http`, or `legacy_sse` (the URL is then the SSE endpoint, e.g. `/sse`).",
            },
            "url": {
                "type": "string",
                "format": "uri",
                "maxLength": 2048,
                "description": "Absolute http(s) URL of the upstream's MCP endpoint, printable ASCII.",
            },
            "description": _text(4096),
        },
    },
    "StdioServerRegistration": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "transport", "command"],
        "description": "A process every data plane runs (after an approval with `trust_stdio: true`), with only "
        "PATH, HOME and LANG from the gateway's environment plus `env`.",
        "properties": {
            "requires_credential": {
                "type": "boolean",
                "description": "Every call needs a credential binding (set by the first binding too; docs/credentials.md).",
            },
            "name": _SERVER_NAME_FIELD,
            "transport": {"type": "string", "enum": ["stdio"]},
            "command": {
                "type": "string",
                "minLength": 1,
                "maxLength": 4096,
                "description": "Executable; a bare name is looked up in PATH. Printable characters only.",
            },
            "args": {
                "type": "array",
                "maxItems": 256,
                "items": _text(4096),
                "description": "Arguments (shown by the API: keep secrets in `env`).",
            },
            "cwd": {
                "type": ["string", "null"],
                "minLength": 1,
                "maxLength": 4096,
                "pattern": "^/",
                "description": "Absolute working directory; null = the gateway's.",
            },
            "env": {
                "type": "object",
                "maxProperties": 100,
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,255}$"},
                "additionalProperties": _text(32768),
                "description": "Extra environment variables; may hold secrets: the API shows only their names.",
            },
            "description": _text(4096),
        },
    },
    "ApprovalOptions": {
        "type": "object",
        "additionalProperties": False,
        "required": ["comment"],
        "properties": {
            "comment": _ref("ApprovalComment"),
            "trust_stdio": {
                "type": "boolean",
                "description": "Required (true) to approve a `stdio` server: confirms that its command is trusted "
                "and self-hosted. Refused for other transports.",
            },
            "discovery_credential": {
                **_UUID,
                "description": "A live credential (not `oauth_token_exchange`) to discover the upstream with, "
                "instead of the server's `everyone` binding (docs/credentials.md).",
            },
        },
    },
    "ApprovalComment": {
        "type": "string",
        "minLength": 1,
        "maxLength": 2000,
        "pattern": "\\S",
        "description": "Why this is approved (required; recorded with the approval and in the control-plane trail).",
    },
    "Approval": {
        "type": "object",
        "additionalProperties": False,
        "required": ["comment"],
        "properties": {"comment": _ref("ApprovalComment")},
    },
    "WhoAmI": {
        "type": "object",
        "required": ["subject", "issuer", "roles", "bootstrap", "decision_id"],
        "properties": {
            "subject": {"type": "string"},
            "issuer": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "bootstrap": {"type": "boolean"},
            "decision_id": {"type": ["string", "null"]},
        },
    },
    "RoleGrantCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["subject", "role", "comment"],
        "properties": {
            "subject": {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "\\S"},
            "issuer": {
                "type": "string",
                "minLength": 1,
                "maxLength": 2048,
                "description": "Default: the admin issuer.",
            },
            "role": {"type": "string", "enum": list(ROLES)},
            "comment": _ref("ApprovalComment"),
        },
    },
    "RoleGrant": {
        "type": "object",
        "required": ["id", "issuer", "subject", "role", "granted_by", "comment", "granted_at"],
        "properties": {
            "id": _UUID,
            "issuer": {"type": "string"},
            "subject": {"type": "string"},
            "role": {"type": "string", "enum": list(ROLES)},
            "granted_by": {"type": "string"},
            "comment": {"type": "string"},
            "granted_at": TIMESTAMP,
        },
    },
    "RoleGrantList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("RoleGrant")}},
    },
    "ControlPlaneAuditRow": {
        "type": "object",
        "description": "One admin request: who, the action, the control-plane policy's decision, the status; for a "
        "change the resource, comment and SHA-256 of its canonical JSON before and after.",
        "required": [
            "id",
            "timestamp",
            "actor",
            "actor_issuer",
            "roles",
            "action",
            "method",
            "path",
            "allowed",
            "reasons",
            "status",
        ],
        "properties": {
            "id": {"type": "integer"},
            "timestamp": TIMESTAMP,
            "request_id": {"type": ["string", "null"]},
            "actor": {"type": "string"},
            "actor_issuer": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "action": {"type": "string"},
            "method": {"type": "string"},
            "path": {"type": "string"},
            "decision_id": {"type": ["string", "null"]},
            "allowed": {"type": "boolean"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "status": {"type": "integer"},
            "resource_kind": {"type": ["string", "null"]},
            "resource_id": {"type": ["string", "null"]},
            "comment": {"type": ["string", "null"]},
            "before_sha256": {"type": ["string", "null"]},
            "after_sha256": {"type": ["string", "null"]},
        },
    },
    "ControlPlaneAuditPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("ControlPlaneAuditRow")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "AuditVerification": {
        "type": "object",
        "required": [
            "intact",
            "message",
            "records",
            "streams",
            "partitions",
            "dropped_partitions",
            "unprotected_records",
            "checkpoint",
            "first_break",
        ],
        "properties": {
            "intact": {"type": "boolean"},
            "message": {"type": "string", "description": "`intact, N records` or `broken: ...`."},
            "records": {"type": "integer", "description": "Records whose links were checked."},
            "streams": {"type": "object", "additionalProperties": {"type": "integer"}},
            "partitions": {"type": "integer"},
            "dropped_partitions": {"type": "integer", "description": "Dropped by retention, signed."},
            "unprotected_records": {
                "type": "integer",
                "description": "Records after the newest checkpoint (a tail deletion there is not detectable yet).",
            },
            "checkpoint": {
                "type": ["object", "null"],
                "properties": {
                    "id": {"type": "integer"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "key_id": {"type": "string"},
                },
            },
            "first_break": {
                "type": ["object", "null"],
                "properties": {
                    "stream": {"type": "string"},
                    "partition": {"type": ["string", "null"]},
                    "seq": {"type": ["integer", "null"]},
                    "decision_id": {"type": ["string", "null"]},
                    "record_id": {"type": ["string", "null"]},
                    "problem": {
                        "type": "string",
                        "enum": [
                            "checkpoint_signature",
                            "checkpoint_link",
                            "hash_mismatch",
                            "missing_record",
                            "unexpected_record",
                            "unsealed",
                            "truncated",
                            "checkpoint_mismatch",
                            "partition_missing",
                            "checkpoint_regression",
                        ],
                    },
                    "detail": {"type": "string"},
                },
            },
        },
    },
    "AuditCheckpoint": {
        "type": "object",
        "required": ["id", "created_at", "key_id", "body", "signature"],
        "properties": {
            "id": {"type": "integer"},
            "created_at": {"type": "string", "format": "date-time"},
            "key_id": {"type": "string", "description": "16 hex digits of SHA-256 over the raw public key."},
            "body": {"type": "string", "description": "The exact signed bytes (canonical JSON)."},
            "signature": {"type": "string", "description": "Ed25519 signature of `body`, hex."},
        },
    },
    "AuditCheckpointPage": {
        "type": "object",
        "required": ["items", "keys"],
        "properties": {
            "items": {"type": "array", "items": _ref("AuditCheckpoint")},
            "keys": {"type": "object", "additionalProperties": {"type": "string"}, "description": "PEM by key id."},
        },
    },
    "AuditPartition": {
        "type": "object",
        "required": ["stream", "name", "lower", "upper", "dropped_at"],
        "properties": {
            "stream": {"type": "string", "enum": ["decisions", "opa_logs", "control_plane"]},
            "name": {"type": "string"},
            "lower": {"type": "string", "format": "date-time"},
            "upper": {"type": "string", "format": "date-time"},
            "dropped_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "AuditPartitionList": {
        "type": "object",
        "required": ["items", "interval", "retention_days"],
        "properties": {
            "items": {"type": "array", "items": _ref("AuditPartition")},
            "interval": {"type": "string", "enum": ["day", "week", "month"]},
            "retention_days": {"type": "integer"},
        },
    },
    "AuditStats": {
        "type": "object",
        "description": "Aggregates of the decisions matching the filters in `since`..`until` (docs/audit.md). "
        "Rankings are largest first, at most `top` long.",
        "required": [
            "since",
            "until",
            "total",
            "outcomes",
            "per_hour",
            "top_denied_tools",
            "top_denied_subjects",
            "denials_by_reason",
            "latency_by_server",
            "latency_method",
        ],
        "properties": {
            "since": TIMESTAMP,
            "until": TIMESTAMP,
            "total": {"type": "integer"},
            "outcomes": {"type": "object", "additionalProperties": {"type": "integer"}},
            "per_hour": {
                "type": "array",
                "description": "Every UTC hour of the range (zeros included), oldest first.",
                "items": {
                    "type": "object",
                    "required": ["hour", "allowed", "denied", "rejected", "error"],
                    "properties": {
                        "hour": TIMESTAMP,
                        **{k: {"type": "integer"} for k in ("allowed", "denied", "rejected", "error")},
                    },
                },
            },
            "top_denied_tools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "server": {"type": ["string", "null"]},
                        "tool": {"type": ["string", "null"]},
                        "count": {"type": "integer"},
                    },
                },
            },
            "top_denied_subjects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"subject": {"type": ["string", "null"]}, "count": {"type": "integer"}},
                },
            },
            "denials_by_reason": {
                "type": "array",
                "description": "A denial with two reasons counts for both.",
                "items": {"type": "object", "properties": {"reason": {"type": "string"}, "count": {"type": "integer"}}},
            },
            "latency_by_server": {
                "type": "array",
                "description": "Continuous percentiles (`percentile_cont`) of `latency_ms`, in milliseconds: exact, "
                "or estimated from hourly histograms (`latency_method`).",
                "items": {
                    "type": "object",
                    "properties": {
                        "server": {"type": ["string", "null"]},
                        "count": {"type": "integer"},
                        "p50_ms": {"type": "number"},
                        "p99_ms": {"type": "number"},
                    },
                },
            },
            "latency_method": {
                "type": "string",
                "enum": ["exact", "histogram"],
                "description": "`exact`: computed from the events. `histogram`: estimated from the hourly rollups' "
                "log-scale histograms (no filter but `server`, and more than 50,000 events with a latency in the "
                "range), within 4.9 % of the exact value (0.05 ms below 0.1 ms). Counts are always exact.",
            },
        },
    },
    "Tool": {
        "type": "object",
        "description": "A pinned tool: its MCP wire form as discovered, plus the SHA-256 of its canonical JSON.",
        "required": ["name", "sha256"],
        "properties": {"name": {"type": "string"}, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    },
    "Server": {
        "type": "object",
        "required": [
            "name",
            "transport",
            "url",
            "description",
            "status",
            "tenant",
            "environment",
            "created_at",
            "approved_at",
            "tools",
            "command",
            "args",
            "cwd",
            "env_keys",
            "trusted",
            "trusted_at",
        ],
        "properties": {
            "name": {"type": "string"},
            "transport": {"type": "string", "enum": ["streamable_http", "legacy_sse", "stdio"]},
            "url": {"type": ["string", "null"], "description": "null for `stdio`."},
            "description": {"type": "string"},
            "command": {"type": ["string", "null"], "description": "`stdio` only."},
            "args": {"type": ["array", "null"], "items": {"type": "string"}, "description": "`stdio` only."},
            "cwd": {"type": ["string", "null"]},
            "env_keys": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "`stdio` only: the names of its `env` (the values are never shown).",
            },
            "requires_credential": {
                "type": "boolean",
                "description": "Every call needs a credential binding (set by the first binding too; docs/credentials.md).",
            },
            "trusted": {"type": "boolean", "description": "A `stdio` server approved with `trust_stdio: true`."},
            "trusted_at": NULLABLE_TIMESTAMP,
            "status": {"type": "string", "enum": ["pending_approval", "approved"]},
            "tenant": {"type": "string"},
            "environment": {"type": "string"},
            "created_at": TIMESTAMP,
            "approved_at": NULLABLE_TIMESTAMP,
            "tools": {"type": "array", "items": _ref("Tool")},
            "prompts": {
                "type": "array",
                "items": _ref("Tool"),
                "description": "The pinned prompts: MCP wire form as discovered, plus `sha256`.",
            },
            "capabilities": {
                "type": "object",
                "description": "The MCP capabilities the server declared at its last approval ({} before).",
            },
            "projection_version": {**VERSION, "description": "Only in the approval answer: the compiled projection."},
            "diff": {
                **_ref("ToolDiff"),
                "description": "Only in the approval answer: the tools this approval pinned against the ones it replaced.",
            },
        },
    },
    "ToolDiff": {
        "type": "object",
        "required": ["added", "removed", "changed"],
        "properties": {
            "added": {"type": "array", "items": {"type": "string"}, "description": "Listed now, not pinned before."},
            "removed": {"type": "array", "items": {"type": "string"}, "description": "Pinned before, not listed now."},
            "changed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "fields"],
                    "properties": {
                        "name": {"type": "string"},
                        "fields": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "enum": ["title", "description", "inputSchema", "outputSchema", "annotations", "other"],
                            },
                        },
                    },
                },
                "description": "Pinned before with another definition; `fields` names what differs.",
            },
        },
    },
    "ServerDrift": {
        "type": "object",
        "required": ["name", "diff"],
        "properties": {"name": {"type": "string"}, "diff": _ref("ToolDiff")},
    },
    "ApiSourceRegistration": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "base_url", "document"],
        "description": "A REST API described by an OpenAPI 3.0 or 3.1 document, served as MCP tools (docs/api-adapter.md). "
        "The document is given here, never fetched; `$ref`s must be local. A 400 `invalid_api_document` names the "
        "location of anything unsupported.",
        "properties": {
            "name": _SERVER_NAME_FIELD,
            "base_url": {
                "type": "string",
                "format": "uri",
                "maxLength": 2048,
                "description": "Absolute http(s) URL every request starts with (scheme, host, port and path prefix); "
                "no credentials, query or fragment. Arguments never change scheme, host or port.",
            },
            "document": {
                "description": "The OpenAPI document: a JSON object, or its JSON or YAML text (at most 4 MiB, "
                "64 levels deep; YAML without anchors or aliases).",
                "oneOf": [{"type": "object"}, {"type": "string", "maxLength": 4194304}],
            },
            "description": _text(4096),
            "selection": {
                "type": "object",
                "additionalProperties": False,
                "description": "Which operations become tools: `include` (absent = all) minus `exclude`; `paths` are "
                "globs on the path template.",
                "properties": {
                    "include": _ref("ApiOperationFilter"),
                    "exclude": _ref("ApiOperationFilter"),
                },
            },
            "overrides": {
                "type": "object",
                "description": "By `operationId` (or `METHOD /path`): `name`, `title`, `description`, `annotations` "
                "of the tool.",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "title": {"type": "string"},
                        "description": {"type": "string"},
                        "annotations": {"type": "object"},
                    },
                },
            },
            "options": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "follow_redirects": {
                        "type": "boolean",
                        "description": "Follow same-origin redirects (at most 5); default false.",
                    },
                    "timeout": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": 300,
                        "description": "Seconds one call may take (default: the data plane's upstream timeout).",
                    },
                    "max_response_bytes": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 67108864,
                        "description": "Largest response body read (default 4 MiB).",
                    },
                },
            },
            "requires_credential": {
                "type": "boolean",
                "description": "Every call needs a credential binding (set by the first binding too; docs/credentials.md).",
            },
        },
    },
    "ApiOperationFilter": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "operation_ids": {"type": "array", "items": {"type": "string"}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "paths": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ApiSourceApproval": {
        "type": "object",
        "additionalProperties": False,
        "required": ["comment"],
        "properties": {
            "comment": _ref("ApprovalComment"),
            "internal": {
                "type": "boolean",
                "description": "The source is internal: its host may resolve to loopback, link-local or private "
                "addresses (refused otherwise, on every call). Required for an IP-literal or `localhost` base URL "
                "of such a class.",
            },
        },
    },
    "ApiSource": {
        "type": "object",
        "required": [
            "name",
            "base_url",
            "description",
            "status",
            "internal",
            "openapi_version",
            "document_sha256",
            "tools",
            "operations",
            "report",
        ],
        "properties": {
            "name": {"type": "string"},
            "base_url": {"type": "string"},
            "description": {"type": "string"},
            "status": {"type": "string", "enum": ["pending_approval", "approved"]},
            "tenant": {"type": "string"},
            "environment": {"type": "string"},
            "created_at": TIMESTAMP,
            "approved_at": NULLABLE_TIMESTAMP,
            "requires_credential": {"type": "boolean"},
            "registered_by": {"type": ["string", "null"]},
            "approved_by": {"type": ["string", "null"]},
            "approval_comment": {"type": ["string", "null"]},
            "internal": {"type": "boolean", "description": "Approved as internal (see `ApiSourceApproval`)."},
            "internal_at": NULLABLE_TIMESTAMP,
            "openapi_version": {"type": "string", "enum": ["3.0", "3.1"]},
            "document_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "selection": {"type": "object"},
            "overrides": {"type": "object"},
            "options": {"type": "object"},
            "tools": {
                "type": "array",
                "items": _ref("Tool"),
                "description": "Approved: the pinned tools (with `sha256`); pending: what approval would pin.",
            },
            "operations": {
                "type": "array",
                "items": {"type": "object"},
                "description": "What each tool sends: method, path template, parameters, body (gateway/apiadapter/binding.py).",
            },
            "report": {"type": "object", "description": "What the compiler renamed, ignored or skipped."},
            "projection_version": {**VERSION, "description": "Only in the approval answer: the compiled projection."},
            "diff": {**_ref("ToolDiff"), "description": "Only in the approval answer."},
        },
    },
    "ApiSourceList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("ApiSource")}},
    },
    "ServerList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("Server")}},
    },
    "PolicyUpload": {
        "type": "object",
        "additionalProperties": False,
        "required": ["modules"],
        "properties": {
            "modules": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 200,
                "description": "Rego sources by file name (no `..`, no leading `/`); 1 MiB in total. Files named "
                "`*_test.rego` are the version's tests: checked, run with `opa test` and coverage on upload, stored "
                "as `tests` and never bundled. At least one file must not be a test. Everything is checked with "
                "`opa check --strict` against the restricted capabilities and the schemas.",
                "propertyNames": {"pattern": "^[A-Za-z0-9_./-]+\\.rego$"},
                "additionalProperties": {"type": "string", "pattern": NO_NUL},
            },
            "data": {"type": ["object", "null"], "description": "Static data under `data.gateway`."},
        },
    },
    "PolicyVersion": {
        "type": "object",
        "required": ["version", "tenant", "environment", "sha256", "status", "created_at", "approved_at", "files"],
        "properties": {
            "version": VERSION,
            "tenant": {"type": "string"},
            "environment": {"type": "string"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "status": {"type": "string", "enum": ["pending_approval", "active", "superseded"]},
            "created_at": TIMESTAMP,
            "approved_at": NULLABLE_TIMESTAMP,
            "files": {"type": "array", "items": {"type": "string"}, "description": "The bundled modules."},
            "test_files": {"type": "array", "items": {"type": "string"}, "description": "The `*_test.rego` files."},
            "created_by": {"type": "string", "description": "Who uploaded it."},
            "modules": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Only in `GET /v1/policies/{version}`.",
            },
            "tests": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "Only in `GET /v1/policies/{version}`: the test modules' sources.",
            },
            "data": {"type": ["object", "null"], "description": "Not in the list."},
            "checks": {
                "anyOf": [_ref("PolicyChecks"), {"type": "null"}],
                "description": "What the upload's checks found; null for versions uploaded before checks were "
                "stored. The list shows a summary (no `failures`, coverage `files`, `fmt.diff` or `check`).",
            },
            "gate": _ref("PolicyGate"),
            "replay": {
                "anyOf": [_ref("ReplayApproval"), {"type": "null"}],
                "description": "Only in `GET /v1/policies/{version}`: the latest finished replay of this version "
                "against recorded decisions (`POST /v1/policies/{version}/replay`), null when none finished.",
            },
            "projection_version": {
                **NULLABLE_VERSION,
                "description": "Only in the approval answer; null when the version was already active.",
            },
        },
    },
    "ReplayRequest": {
        "type": "object",
        "additionalProperties": False,
        "description": "Which recorded decisions (OPA decision logs at `gateway_runtime/main/call`) to replay, "
        "the newest first; every member is optional and the body may be empty.",
        "properties": {
            "since": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "Inclusive lower bound on the decision's timestamp (RFC 3339, with zone).",
            },
            "until": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "Exclusive upper bound on the decision's timestamp (RFC 3339, with zone).",
            },
            "limit": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": REPLAY_MAX_LIMIT,
                "default": REPLAY_DEFAULT_LIMIT,
                "description": "At most this many decisions.",
            },
        },
    },
    "ReplayFlips": {
        "type": "object",
        "required": ["allow_to_deny", "deny_to_allow"],
        "properties": {
            "allow_to_deny": {"type": "integer", "minimum": 0},
            "deny_to_allow": {"type": "integer", "minimum": 0},
        },
    },
    "ReplaySummary": {
        "type": "object",
        "description": 'The outcome of a replay (README "Decision replay"). Groups are keyed by tool name, '
        "subject (`sub`) and reason (the candidate's for a new deny, the original's for a lifted one); "
        "`(none)` when absent.",
        "required": ["total", "evaluated", "unchanged", "flips", "flipped", "errors", "sentence"],
        "properties": {
            "total": {"type": "integer", "description": "Decisions replayed."},
            "evaluated": {"type": "integer", "description": "Decisions OPA evaluated (total minus errors)."},
            "unchanged": {"type": "integer"},
            "flips": _ref("ReplayFlips"),
            "subjects": {**_ref("ReplayFlips"), "description": "Distinct subjects per direction."},
            "tools": {**_ref("ReplayFlips"), "description": "Distinct tools per direction."},
            "by_tool": {"type": "object", "additionalProperties": _ref("ReplayFlips")},
            "by_subject": {"type": "object", "additionalProperties": _ref("ReplayFlips")},
            "by_reason": {"type": "object", "additionalProperties": _ref("ReplayFlips")},
            "flipped": {
                "type": "array",
                "description": "Each flip (the first 1000, newest first).",
                "items": {
                    "type": "object",
                    "required": ["decision_id", "timestamp", "direction", "original", "candidate"],
                    "properties": {
                        "decision_id": {"type": "string"},
                        "timestamp": TIMESTAMP,
                        "direction": {"type": "string", "enum": ["allow_to_deny", "deny_to_allow"]},
                        "action": {"type": ["string", "null"]},
                        "subject": {"type": ["string", "null"]},
                        "server": {"type": ["string", "null"]},
                        "tool": {"type": ["string", "null"]},
                        "original": {"type": "object", "description": "`{allow, reasons}` as logged."},
                        "candidate": {"type": "object", "description": "`{allow, reasons}` of the candidate."},
                    },
                },
            },
            "flipped_truncated": {"type": "boolean"},
            "invalid_decisions": {
                "type": "integer",
                "description": "Inputs for which the candidate's decision was undefined or malformed (a deny).",
            },
            "errors": {
                "type": "object",
                "description": "Inputs OPA could not evaluate (not flips); the first 100 listed.",
                "required": ["count", "items"],
                "properties": {
                    "count": {"type": "integer"},
                    "items": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"decision_id": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            },
            "original_revisions": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "How many replayed decisions each bundle revision had made.",
            },
            "erased_fields": {
                "type": "array",
                "items": {"type": "string"},
                "description": "JSON pointers the decision-log mask erased (absent in replay).",
            },
            "sentence": {"type": "string", "description": "The summary in one sentence."},
        },
    },
    "Replay": {
        "type": "object",
        "required": ["replay_id", "policy_version", "status", "total", "done", "created_by", "created_at"],
        "properties": {
            "replay_id": _UUID,
            "policy_version": VERSION,
            "baseline_version": {**NULLABLE_VERSION, "description": "The active version when it started."},
            "status": {"type": "string", "enum": ["running", "done", "failed"]},
            "since": NULLABLE_TIMESTAMP,
            "until": NULLABLE_TIMESTAMP,
            "limit": {"type": "integer"},
            "created_by": {"type": "string", "description": "Who started it."},
            "created_at": TIMESTAMP,
            "heartbeat_at": TIMESTAMP,
            "finished_at": NULLABLE_TIMESTAMP,
            "total": {"type": ["integer", "null"], "description": "Decisions selected; null until counted."},
            "done": {"type": "integer", "description": "Decisions replayed so far."},
            "error": {"type": ["string", "null"], "description": "Why it failed."},
            "summary": {
                "anyOf": [_ref("ReplaySummary"), {"type": "null"}],
                "description": "Only in `GET .../replays/{id}`; null until done.",
            },
            "flips": {"anyOf": [_ref("ReplayFlips"), {"type": "null"}], "description": "Only in the list."},
            "sentence": {"type": ["string", "null"], "description": "Only in the list."},
        },
    },
    "ReplayList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("Replay")}},
    },
    "ReplayApproval": {
        "type": "object",
        "description": "The latest finished replay, as the approval view shows it.",
        "required": ["replay_id", "finished_at", "created_by", "total", "flips", "sentence"],
        "properties": {
            "replay_id": _UUID,
            "finished_at": NULLABLE_TIMESTAMP,
            "created_by": {"type": "string"},
            "baseline_version": NULLABLE_VERSION,
            "since": NULLABLE_TIMESTAMP,
            "until": NULLABLE_TIMESTAMP,
            "total": {"type": "integer"},
            "flips": _ref("ReplayFlips"),
            "subjects": _ref("ReplayFlips"),
            "tools": _ref("ReplayFlips"),
            "errors": {"type": "integer"},
            "sentence": {"type": "string"},
        },
    },
    "PolicyChecks": {
        "type": "object",
        "description": 'Stored with the version at upload (README "Tested policy versions").',
        "properties": {
            "check": {
                "type": "object",
                "properties": {
                    "strict": {"type": "boolean"},
                    "capabilities_sha256": {"type": "string"},
                    "schemas": {"type": ["string", "null"], "description": "The schema directory used, or null."},
                    "input_schema": {
                        "type": ["string", "null"],
                        "description": "`decision_input` when it typed `input` of modules naming no schema.",
                    },
                },
            },
            "fmt": {
                "type": "object",
                "description": "Files `opa fmt` would change: a warning only.",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string"}},
                    "diff": {"type": "string", "description": "Unified diff to the formatted text (64 KiB at most)."},
                    "truncated": {"type": "boolean"},
                    "error": {"type": "string"},
                },
            },
            "tests": {
                "type": ["object", "null"],
                "description": "null without test modules. `status` `error`: the run did not complete (`message`).",
                "required": ["status", "total", "passed", "failed", "errors", "skipped"],
                "properties": {
                    "status": {"type": "string", "enum": ["passed", "failed", "error"]},
                    "message": {"type": ["string", "null"]},
                    "total": {"type": "integer", "minimum": 0},
                    "passed": {"type": "integer", "minimum": 0},
                    "failed": {"type": "integer", "minimum": 0},
                    "errors": {"type": "integer", "minimum": 0},
                    "skipped": {"type": "integer", "minimum": 0, "description": "`todo_` tests."},
                    "failures": {
                        "type": "array",
                        "description": "At most 100, by file and line.",
                        "items": {
                            "type": "object",
                            "required": ["name", "file", "line", "kind"],
                            "properties": {
                                "name": {"type": "string", "description": "e.g. `data.gateway_test.test_x`."},
                                "file": {"type": "string"},
                                "line": {"type": "integer"},
                                "kind": {"type": "string", "enum": ["fail", "error"]},
                                "message": {"type": ["string", "null"], "description": "OPA's, for an error."},
                                "duration_ms": {"type": "number", "description": "How long the test ran."},
                            },
                        },
                    },
                    "failures_truncated": {"type": "boolean"},
                },
            },
            "coverage": {
                "type": ["object", "null"],
                "description": "Of the version's own modules (not tests, not reserved Rego); null without tests or "
                "when a test failed (OPA measures it only when every test passes).",
                "required": ["percent"],
                "properties": {
                    "percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
                    "covered_lines": {"type": "integer", "minimum": 0},
                    "not_covered_lines": {"type": "integer", "minimum": 0},
                    "files": {"type": "object", "additionalProperties": {"type": "object"}},
                    "error": {"type": "string"},
                },
            },
        },
    },
    "PolicyGate": {
        "type": "object",
        "description": "The approval gate judged now (config `policy_gate`) against the stored checks.",
        "required": ["passed", "reasons", "min_coverage", "tests_pass"],
        "properties": {
            "passed": {"type": "boolean"},
            "reasons": {
                "type": "array",
                "items": {"type": "string"},
                "description": "What failed, e.g. `coverage 42.0 % < 80 %`, `2 tests failing`.",
            },
            "min_coverage": {"type": "number", "minimum": 0, "maximum": 100},
            "tests_pass": {"type": "boolean"},
        },
    },
    "PolicyDiff": {
        "type": "object",
        "required": ["from", "to", "modules", "unchanged", "data", "summary"],
        "properties": {
            "from": VERSION,
            "to": VERSION,
            "modules": {
                "type": "array",
                "description": "Changed files (modules and tests), by name.",
                "items": {
                    "type": "object",
                    "required": ["file", "test", "status", "diff"],
                    "properties": {
                        "file": {"type": "string"},
                        "test": {"type": "boolean"},
                        "status": {"type": "string", "enum": ["added", "removed", "changed"]},
                        "diff": {
                            "type": "string",
                            "description": "Unified diff, headers `a/<file>` and `b/<file>` (`/dev/null` when absent).",
                        },
                    },
                },
            },
            "unchanged": {"type": "array", "items": {"type": "string"}},
            "data": {
                "type": "object",
                "required": ["changed", "patch", "text"],
                "properties": {
                    "changed": {"type": "boolean"},
                    "patch": {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "RFC 6902 JSON Patch turning a's data into b's (null data counts as {}).",
                    },
                    "text": {"type": "string", "description": "One line per operation."},
                },
            },
            "summary": {
                "type": "object",
                "properties": {
                    k: {"type": "integer", "minimum": 0}
                    for k in ("added", "removed", "changed", "unchanged", "data_operations")
                },
            },
        },
    },
    "PolicyList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("PolicyVersion")}},
    },
    "ProjectionStatus": {
        "type": "object",
        "description": "The rollout view: desired version, the version every live instance runs, per-instance state.",
        "required": ["desired_version", "active_version", "policy_version", "data_planes", "opa"],
        "properties": {
            "desired_version": {"type": "integer", "minimum": 0},
            "active_version": NULLABLE_VERSION,
            "policy_version": NULLABLE_VERSION,
            "data_planes": {"type": "array", "items": {"type": "object", "required": ["id", "state", "live"]}},
            "opa": {
                "type": "array",
                "description": "One entry per OPA, from its status reports. `state` `error` with `code` "
                "`bundle_error` and `message` (e.g. `.manifest: digest mismatch ...`, `verification key "
                "corresponding to ID k1 not found`, `bundle missing .signatures.json file`): OPA refused the newest "
                "bundle and keeps `active_version`, its last good one (docs/signed-bundles.md).",
                "items": {"type": "object", "required": ["id", "state", "live"]},
            },
        },
    },
    "Decision": {
        "type": "object",
        "description": "One runtime audit event (metadata only, never raw arguments).",
        "required": ["decision_id", "timestamp", "tenant", "environment", "allowed", "reasons", "opa_logged"],
        "properties": {
            "decision_id": {"type": "string"},
            "timestamp": TIMESTAMP,
            "tenant": {"type": "string"},
            "environment": {"type": "string"},
            "allowed": {"type": "boolean"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "projection_version": NULLABLE_VERSION,
            "latency_ms": {"type": ["number", "null"], "minimum": 0},
            "opa_logged": {"type": "boolean", "description": "Whether OPA's decision-log event has arrived."},
            **{
                name: {"type": ["string", "null"]}
                for name in (
                    "dataplane_id",
                    "subject",
                    "client_id",
                    "action",
                    "server",
                    "tool",
                    "policy_revision",
                    "status",
                    "error_category",
                    "arguments_sha256",
                    "result_sha256",
                    "session_id",
                    "protocol_version",
                )
            },
            "opa_decision_log": {
                "type": ["object", "null"],
                "description": "Only in `GET /v1/audit/decisions/{decision_id}`: the joined OPA event.",
            },
        },
    },
    "CredentialCreate": {
        "description": "A new credential: `kind`, non-secret `config` and write-only `secret`, whose fields "
        "depend on the kind (docs/credentials.md). A 400 names the field and never echoes a value.",
        "oneOf": [
            _ref(f"{name}Credential")
            for name in (
                "Bearer",
                "Headers",
                "Query",
                "StdioEnv",
                "OAuthClientCredentials",
                "OAuthTokenExchange",
                "OAuthAuthorizationCode",
            )
        ],
    },
    "BearerCredential": _credential_body(
        "bearer",
        "A static token sent as `Authorization: Bearer <token>`.",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["token"],
            "properties": {"token": {"type": "string", "minLength": 1, "maxLength": 8192, "pattern": "^[!-~]+$"}},
        },
        {"type": "object", "maxProperties": 0},
    ),
    "HeadersCredential": _credential_body(
        "headers",
        "Arbitrary request headers. Hop-by-hop and framing headers (Connection, Host, Content-Length, "
        "Content-Type, Transfer-Encoding, ...) and MCP's own (Mcp-Session-Id, Mcp-Protocol-Version, Last-Event-ID) "
        "are refused; names are case-insensitive.",
        _secret_map(
            "headers",
            {"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$"},
            {"type": "string", "minLength": 1, "maxLength": 8192, "pattern": "^[!-~]([ -~\\t]*[!-~])?$"},
            32,
        ),
        {"type": "object", "additionalProperties": False, "properties": {"header_names": _NAMES}},
    ),
    "QueryCredential": _credential_body(
        "query",
        "Query-parameter keys for legacy APIs (redacted from every log line).",
        _secret_map("params", {"pattern": "^[A-Za-z0-9._~\\[\\]-]{1,256}$"}, _SECRET_TEXT, 32),
        {"type": "object", "additionalProperties": False, "properties": {"param_names": _NAMES}},
    ),
    "StdioEnvCredential": _credential_body(
        "stdio_env",
        "Environment variables of a stdio upstream. PATH, HOME, LD_*, DYLD_*, PYTHONPATH, NODE_OPTIONS and the "
        "like (they change what runs) are refused.",
        _secret_map(
            "env",
            {"pattern": "^[A-Za-z_][A-Za-z0-9_]{0,255}$"},
            {"type": "string", "maxLength": 32768, "pattern": NO_NUL},
            100,
        ),
        {"type": "object", "additionalProperties": False, "properties": {"env_names": _NAMES}},
    ),
    "OAuthClientCredentialsCredential": _credential_body(
        "oauth_client_credentials",
        "OAuth 2.0 client credentials grant (RFC 6749 section 4.4).",
        _CLIENT_SECRET,
        _oauth_config(exchange=False),
    ),
    "OAuthTokenExchangeCredential": _credential_body(
        "oauth_token_exchange",
        "OAuth 2.0 token exchange (RFC 8693): the caller's token is exchanged at call time.",
        _CLIENT_SECRET,
        _oauth_config(exchange=True),
    ),
    "OAuthAuthorizationCodeCredential": _credential_body(
        "oauth_authorization_code",
        "Per-user OAuth 2.1 authorization code with PKCE: each user connects their own upstream account "
        "through `GET /v1/oauth/connect/{handle}` (docs/credentials.md). Without `client_id` the gateway "
        "registers itself (RFC 7591); without endpoints it discovers them (RFC 9728, RFC 8414).",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {"client_secret": _SECRET_TEXT},
        },
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "client_id": {"type": "string", "minLength": 1, "maxLength": 2048},
                "scope": {"type": ["string", "null"], "maxLength": 2048, "description": "RFC 6749 scope tokens."},
                "resource": {
                    "type": ["string", "null"],
                    "maxLength": 2048,
                    "description": "RFC 8707 resource indicator; default: the server's URL.",
                },
                "authorization_endpoint": {"type": "string", "format": "uri", "maxLength": 2048},
                "token_endpoint": {"type": "string", "format": "uri", "maxLength": 2048},
                "issuer": {
                    "type": "string",
                    "format": "uri",
                    "maxLength": 2048,
                    "description": "With configured endpoints only: pins the issuer; the callback then requires "
                    "RFC 9207 `iss` equal to it.",
                },
                "auth_method": {
                    "type": "string",
                    "enum": ["none", "client_secret_basic", "client_secret_post"],
                    "description": "Default: `client_secret_basic` with a `client_secret`, else `none` (PKCE only).",
                },
            },
        },
    ),
    "CredentialRotation": {
        "type": "object",
        "description": "The new secret, with the fields of the credential's kind.",
        "additionalProperties": False,
        "required": ["secret"],
        "properties": {"secret": {"type": "object", "description": "Write-only."}},
    },
    "Credential": {
        "type": "object",
        "description": "A credential's metadata; no answer ever holds secret material.",
        "required": [
            "id",
            "tenant",
            "environment",
            "name",
            "kind",
            "config",
            "fingerprint",
            "kek_id",
            "created_by",
            "created_at",
            "rotated_at",
            "last_used_at",
            "revoked_at",
            "status",
        ],
        "properties": {
            "id": _UUID,
            "tenant": {"type": "string"},
            "environment": {"type": "string"},
            "name": {"type": "string"},
            "kind": {
                "type": "string",
                "enum": list(KINDS),
            },
            "config": {"type": "object", "description": "The non-secret fields (names of a map kind's entries)."},
            "fingerprint": {
                "type": "string",
                "pattern": "^[0-9a-f]{16}$",
                "description": "HMAC-SHA-256 of the secret under a key derived from the KEK, 16 hex digits.",
            },
            "kek_id": {
                "type": ["string", "null"],
                "description": "The KEK wrapping the data key (null once revoked).",
            },
            "created_by": {"type": "string"},
            "created_at": TIMESTAMP,
            "rotated_at": NULLABLE_TIMESTAMP,
            "last_used_at": NULLABLE_TIMESTAMP,
            "revoked_at": NULLABLE_TIMESTAMP,
            "status": {"type": "string", "enum": ["active", "revoked"]},
            "redirect_uri": {
                "type": "string",
                "description": "oauth_authorization_code with configured endpoints only: the redirect URI to "
                "register for its client at the authorization server (one per credential and issuer).",
            },
        },
    },
    "CredentialList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("Credential")}},
    },
    "RewrapResult": {
        "type": "object",
        "required": ["current_kek_id", "rewrapped", "failed", "by_kek", "oauth_users", "remaining"],
        "properties": {
            "current_kek_id": {"type": "string"},
            "rewrapped": {"type": "integer", "minimum": 0},
            "failed": {
                "type": "array",
                "items": _UUID,
                "description": "Credentials whose KEK is not configured (left as they were).",
            },
            "by_kek": {
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 0},
                "description": "Live credentials per KEK id after the run.",
            },
            "oauth_users": {
                "type": "object",
                "description": "The per-user OAuth rows, per table (credential_user_tokens, oauth_connects, "
                "credential_oauth_clients): rows re-wrapped, rows that failed (named by identity, never a secret), "
                "and sealed rows per KEK id after the run.",
                "additionalProperties": {
                    "type": "object",
                    "required": ["rewrapped", "failed", "by_kek"],
                    "properties": {
                        "rewrapped": {"type": "integer", "minimum": 0},
                        "failed": {"type": "array", "items": {"type": "object"}},
                        "by_kek": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                    },
                },
            },
            "remaining": {
                "type": "integer",
                "minimum": 0,
                "description": "Sealed rows of all four tables still under another KEK: 0 means old KEKs can go.",
            },
        },
    },
    "Subject": {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind"],
        "description": "Who a binding applies to: `user` (JWT `sub`), `client` (client id), `role`, or `everyone` "
        "(no `value`). The most specific matching binding wins: user > client > role > everyone.",
        "properties": {
            "kind": {"type": "string", "enum": ["user", "role", "client", "everyone"]},
            "value": {"type": ["string", "null"], "minLength": 1, "maxLength": 1024},
        },
    },
    "BindingCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["server", "subject", "credential_id"],
        "properties": {"server": _SERVER_NAME_FIELD, "subject": _ref("Subject"), "credential_id": _UUID},
    },
    "Binding": {
        "type": "object",
        "required": ["id", "tenant", "environment", "server", "subject", "credential_id", "created_by", "created_at"],
        "properties": {
            "id": _UUID,
            "tenant": {"type": "string"},
            "environment": {"type": "string"},
            "server": {"type": "string"},
            "subject": _ref("Subject"),
            "credential_id": _UUID,
            "created_by": {"type": "string"},
            "created_at": TIMESTAMP,
        },
    },
    "BindingList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("Binding")}},
    },
    "ApiKeyCreate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["subject"],
        "description": "A key for a machine agent. Give `expires_at` or `ttl`, not both; default 90 days, at most "
        "366 days ahead.",
        "properties": {
            "subject": {**_text(), "minLength": 1, "description": "The subject the key authenticates as."},
            "roles": {
                "type": "array",
                "maxItems": 64,
                "items": {**_text(256), "minLength": 1},
                "description": "`subject.roles` in the policy input.",
            },
            "expires_at": {"type": "string", "format": "date-time", "description": "RFC 3339, with zone."},
            "ttl": {"type": "integer", "minimum": 1, "maximum": 366 * 86400, "description": "Seconds from now."},
            "description": _text(),
        },
    },
    "ApiKey": {
        "type": "object",
        "required": [
            "id",
            "subject",
            "roles",
            "description",
            "created_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "revoked_by",
            "status",
        ],
        "description": "An API key's metadata: never the key, never its hash.",
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "subject": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "description": {"type": "string"},
            "created_by": {"type": "string"},
            "created_at": TIMESTAMP,
            "expires_at": TIMESTAMP,
            "revoked_at": {"type": ["string", "null"], "format": "date-time"},
            "revoked_by": {"type": ["string", "null"]},
            "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
            "projection_version": {
                "type": "integer",
                "description": "Create and revoke: the projection that carries the change; data planes accept "
                "(or refuse) the key once they run it.",
            },
        },
    },
    "ApiKeyCreated": {
        "allOf": [
            _ref("ApiKey"),
            {
                "type": "object",
                "required": ["key", "projection_version"],
                "properties": {
                    "key": {
                        "type": "string",
                        "pattern": "^gwk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$",
                        "description": "The key, shown this once (`Authorization: Bearer <key>` on the data plane).",
                    }
                },
            },
        ]
    },
    "ApiKeyList": {
        "type": "object",
        "required": ["items"],
        "properties": {"items": {"type": "array", "items": _ref("ApiKey")}},
    },
    "DecisionPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref("Decision")},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
}

_RESPONSES: dict[str, Any] = {
    name: _json(_ref("Error"), text)
    for name, text in {
        "BadRequest": "Malformed input: `bad_request` (or a more specific category) naming the parameter.",
        "Unauthorized": "Missing or wrong bearer token (`admin_unauthenticated`, `WWW-Authenticate: Bearer`).",
        "AdminForbidden": "The control-plane policy refused the request (`admin_forbidden`): no role of the caller "
        "grants the action, or four-eyes (an approver approving what they wrote); the message has the reasons.",
        "NotFound": "No such record in this control plane's scope (`not_found`).",
        "Conflict": "The record already exists, or is in the wrong state (`conflict`).",
        "PolicyGateFailed": "The version fails the approval gate (`policy_gate_failed`); the message names what "
        "failed, e.g. `coverage 42.0 % < 80 %; 2 tests failing`. Nothing changed.",
        "BadGateway": "The upstream could not be listed (`upstream_unavailable`, `upstream_protocol_error`).",
        "GatewayTimeout": "Listing the upstream's tools timed out (`upstream_timeout`).",
        "ServiceUnavailable": "PostgreSQL is unreachable or restarting (`database_unavailable`), or the control "
        "plane's own OPA is (`policy_unavailable`); retry after `Retry-After` seconds. Nothing was changed.",
        "CredentialsUnavailable": "No key-encryption key is configured (`credentials_unavailable`: set "
        "`GATEWAY_CREDENTIALS_KEK_FILE` or `GATEWAY_CREDENTIALS_KEK`), or PostgreSQL is unreachable "
        "(`database_unavailable`). Nothing was changed.",
    }.items()
}

_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
_INTERNAL: list[dict[str, list[str]]] = [{"internalToken": []}]
_OPA: list[dict[str, list[str]]] = [{"opaToken": []}]
_TRAIL_FILTERS = [
    _query("subject", _text(), "Exact subject (JWT `sub`)."),
    _query("client_id", _text(), "Exact client (agent) id."),
    _query("server", _text(), "Exact server name."),
    _query("tool", _text(), "Exact tool name."),
    _query("allowed", {"type": "boolean"}, "`true` or `false`."),
    _query(
        "outcome",
        {"type": "string", "enum": ["allowed", "denied", "rejected", "error"]},
        "From `status` and `allowed` (docs/audit.md): `error` and `rejected` by status, else `denied` when not "
        "allowed, else `allowed`.",
    ),
    _query("action", _text(), "Exact MCP method, e.g. `tools/call`."),
    _query("status", _text(), "Exact status: `ok`, `tool_error`, `denied`, `rejected`, `error`."),
    _query("error_category", _text(), "Exact error category, e.g. `policy_denied`."),
    _query("policy_revision", _text(), "Exact policy revision the decision was made under."),
    _query("projection_version", {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT}, "Exact version."),
    _query("protocol_version", _text(), "Exact MCP protocol version, e.g. `2025-11-25`."),
    _query("dataplane_id", _text(), "Exact data plane id."),
    _query(
        "min_latency_ms",
        {"type": "string", "pattern": "^[0-9]{1,10}(\\.[0-9]{1,6})?$"},
        "Only decisions slower than this many milliseconds (strictly greater).",
    ),
    _query(
        "reason",
        {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^\\u0000\\n\\r]*$"},
        "Case-insensitive substring of one of the reasons.",
    ),
    _query(
        "q",
        {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": "^[^\\u0000]*$"},
        "Free-text search over the reasons: 1-8 words, each a case-insensitive substring (trigram index).",
    ),
    _query("since", {"type": "string", "format": "date-time"}, "Inclusive lower bound (RFC 3339, with zone)."),
    _query("until", {"type": "string", "format": "date-time"}, "Exclusive upper bound (RFC 3339, with zone)."),
]
"""The runtime trail's filters: the decisions page, the stats and the export take them all."""
_ORDER = {"type": "string", "enum": ["desc", "asc"]}
_AUDIT_FILTERS = [
    *_TRAIL_FILTERS,
    _query("order", _ORDER, "`desc` (default): newest first; `asc`: oldest first."),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Page size."),
    _query("cursor", _text(), "`next_cursor` of the previous page, unchanged (same `order`)."),
]
_CONTROL_PLANE_FILTERS = [
    _query("actor", _text(1024), "Only this actor (`sub@iss`, or `bootstrap`)."),
    _query("action", _text(128), "Only this action, e.g. `policies.approve`."),
    _query("allowed", {"type": "boolean"}, "The control-plane policy's decision."),
    _query("status", {"type": "integer", "minimum": 100, "maximum": 599}, "The HTTP status answered."),
    _query("resource_kind", _text(128), "Only changes of this kind, e.g. `server`, `policy`, `role_grant`."),
    _query("resource_id", _text(), "Only changes of this resource."),
    _query("changes", {"type": "string", "enum": ["true", "false"]}, "Only rows naming a resource."),
    _query("since", {"type": "string", "format": "date-time"}, "RFC 3339, inclusive."),
    _query("until", {"type": "string", "format": "date-time"}, "RFC 3339, exclusive."),
]


def _op(
    op_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    body: str | dict[str, Any] | None = None,
    internal: bool = False,
    opa: bool = False,
) -> dict[str, Any]:
    """One operation: the admin token's, the internal token's (``internal``), or the OPA
    token's (``opa``, an internal operation of OPA sidecars)."""
    internal = internal or opa
    op: dict[str, Any] = {
        "operationId": op_id,
        "tags": [tag],
        "summary": summary,
        "security": _OPA if opa else _INTERNAL if internal else _ADMIN,
        "responses": {**responses, "401": _error("Unauthorized"), "503": _error("ServiceUnavailable")},
    }
    if not internal:  # every admin request is decided by the control-plane policy
        op["responses"].setdefault("403", _error("AdminForbidden"))
    if parameters and any(p.get("in") == "path" for p in parameters):
        op["responses"].setdefault("400", _error("BadRequest"))  # e.g. control characters in the path
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        schema = _ref(body) if isinstance(body, str) else body
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if internal:
        op["x-internal"] = True
    return op


def _optional_body(op: dict[str, Any]) -> dict[str, Any]:
    """``op`` with its request body optional (an empty body means every default)."""
    op["requestBody"]["required"] = False
    return op


_NAME_PARAM = _path("name", {"type": "string", "pattern": SERVER_NAME}, "The server's name.")
_CREDENTIAL_ID = _path("id", _UUID, "The credential's id.")


def _credentials_op(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """An admin operation of the credentials API: its 503 also means "no KEK configured"."""
    op = _op(*args, **kwargs)
    op["responses"]["503"] = _error("CredentialsUnavailable")
    return op


_VERSION_PARAM = _path("version", VERSION, "The policy version number.")
_ETAG_HEADERS = {"ETag": {"description": 'The projection version, `"p<N>"`.', "schema": {"type": "string"}}}
_LONG_POLL = [
    {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": 'The ETag (`"p<N>"`) the caller holds.',
    },
    {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "`wait=<s>`: hold a not-modified answer up to s seconds (capped) for a newer projection.",
    },
]

_HTML_PAGE = {"description": "A small HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}
_HTML_OR_JSON_400 = {
    "description": "A small HTML page; or JSON `bad_request` for a path with control characters.",
    "content": {"text/html": {"schema": {"type": "string"}}, "application/json": {"schema": _ref("Error")}},
}

_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "operationId": "getHealthz",
            "tags": ["meta"],
            "summary": "Liveness probe (no token): the process serves HTTP.",
            "security": [],
            "responses": {"200": _json(_PROBE, "Alive.")},
        }
    },
    "/readyz": {
        "get": {
            "operationId": "getReadyz",
            "tags": ["meta"],
            "summary": "Readiness probe (no token): PostgreSQL answers (and migrations ran before serving).",
            "security": [],
            "responses": {"200": _json(_PROBE, "Ready."), "503": _json(_PROBE, "Not ready; `reasons` says why.")},
        }
    },
    OPENAPI_PATH: {
        "get": {
            "operationId": "getOpenAPI",
            "tags": ["meta"],
            "summary": "This document (no token needed: it holds no data).",
            "security": [],
            "responses": {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "OpenAPI 3.1")},
        }
    },
    "/v1/oauth/connect/{handle}": {
        "get": {
            "operationId": "oauthConnectPage",
            "tags": ["oauth"],
            "summary": "A user's single-use connect link (no token: the handle is the bearer, 10 minutes): a "
            "confirmation page naming the server and the gateway identity, which sets a browser-binding cookie "
            "and POSTs its nonce back. Changes nothing.",
            "security": [],
            "parameters": [_path("handle", {"type": "string"}, "The connect handle the broker gave the caller.")],
            "responses": {"200": _HTML_PAGE, "400": _HTML_OR_JSON_400, "404": _HTML_PAGE},
        },
        "post": {
            "operationId": "oauthConnect",
            "tags": ["oauth"],
            "summary": "Confirm the connect (same-origin form with the page's nonce and cookie): 302 to the "
            "upstream's authorization server (authorization code + PKCE S256). Uses the handle up.",
            "security": [],
            "parameters": [_path("handle", {"type": "string"}, "The connect handle the broker gave the caller.")],
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["confirm"],
                            "properties": {"confirm": {"type": "string", "description": "The page's nonce."}},
                        }
                    }
                },
            },
            "responses": {
                "302": {"description": "To the authorization endpoint.", "headers": {"Location": {"schema": {}}}},
                "400": _HTML_OR_JSON_400,
                "403": _HTML_PAGE,
                "404": _HTML_PAGE,
                "502": _HTML_PAGE,
            },
        },
    },
    "/v1/oauth/callback/{key}": {
        "get": {
            "operationId": "oauthCallback",
            "tags": ["oauth"],
            "summary": "The OAuth redirect URI, one per (credential, issuer): exchanges the code, stores the user's "
            "tokens sealed. No token: `state` with the browser's cookie is the bearer.",
            "security": [],
            "parameters": [
                _path("key", {"type": "string"}, "The (credential, issuer) key of the redirect URI."),
                _query("code", {"type": "string"}, "The authorization code."),
                _query("state", {"type": "string"}, "The state of the authorization request."),
                _query("error", {"type": "string"}, "An error code of the authorization server."),
                _query("iss", {"type": "string"}, "RFC 9207 issuer identifier."),
            ],
            "responses": {"200": _HTML_PAGE, "400": _HTML_OR_JSON_400},
        }
    },
    "/v1/admin/whoami": {
        "get": _op(
            "whoAmI",
            "admin",
            "The caller as the control plane sees it: subject, issuer, roles, and this request's decision id.",
            {"200": _json(_ref("WhoAmI"), "The caller.")},
        )
    },
    "/v1/admin/roles": {
        "get": _op(
            "listRoleGrants",
            "admin",
            "Roles granted by the control plane (besides a JWT's roles claim), oldest first.",
            {"200": _json(_ref("RoleGrantList"), "The grants.")},
        ),
        "post": _op(
            "grantRole",
            "admin",
            "Grant a role to a subject of an admin issuer (effective on their next request).",
            {
                "201": _json(_ref("RoleGrant"), "Granted."),
                "400": _error("BadRequest"),
                "409": _error("Conflict"),
            },
        )
        | {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref("RoleGrantCreate")}}}},
    },
    "/v1/admin/roles/{id}": {
        "delete": _op(
            "revokeRoleGrant",
            "admin",
            "Revoke a role grant.",
            {"200": _json(_ref("RoleGrant"), "The revoked grant."), "404": _error("NotFound")},
            parameters=[_path("id", _UUID, "The grant id.")],
        )
    },
    "/v1/audit/control-plane": {
        "get": _op(
            "listControlPlaneAudit",
            "audit",
            "Every admin request with its decision id, newest first, keyset-paginated (docs/audit.md).",
            {"200": _json(_ref("ControlPlaneAuditPage"), "The rows."), "400": _error("BadRequest")},
            parameters=[
                *_CONTROL_PLANE_FILTERS,
                _query("order", _ORDER, "`desc` (default): newest first; `asc`: oldest first."),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "At most this many (100)."),
                _query("cursor", _text(), "`next_cursor` of the previous page, unchanged (same `order`)."),
            ],
        )
    },
    "/v1/control-plane/scope": {
        "get": _op(
            "getScope",
            "meta",
            "The tenant and environment this control plane serves.",
            {
                "200": _json(_ref("Scope"), "The scope."),
            },
        )
    },
    "/v1/servers": {
        "get": _op(
            "listServers",
            "servers",
            "Every registered server, by name, with its pinned tools.",
            {
                "200": _json(_ref("ServerList"), "The servers."),
            },
        ),
        "post": _op(
            "registerServer",
            "servers",
            "Register an upstream MCP server (pending approval).",
            {
                "201": _json(_ref("Server"), "Registered."),
                "400": _error("BadRequest"),
                "409": _error("Conflict"),
            },
            body="ServerRegistration",
        ),
    },
    "/v1/servers/{name}": {
        "get": _op(
            "getServer",
            "servers",
            "One server with its pinned tools.",
            {"200": _json(_ref("Server"), "The server."), "400": _error("BadRequest"), "404": _error("NotFound")},
            parameters=[_NAME_PARAM],
        )
    },
    "/v1/servers/{name}/approve": {
        "post": _op(
            "approveServer",
            "servers",
            "Connect to the upstream, list and pin its tools and prompts, record its capabilities, approve, "
            "and compile a projection.",
            {
                "200": _json(_ref("Server"), "Approved; `projection_version` is the compiled projection."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
                "502": _error("BadGateway"),
                "504": _error("GatewayTimeout"),
            },
            parameters=[_NAME_PARAM],
        )
        | {
            "requestBody": {
                "required": True,
                "description": 'A `comment` (required); `{"trust_stdio": true}` for a `stdio` server (400 without);'
                " `discovery_credential` for an upstream that needs a credential and has no `everyone` binding.",
                "content": {"application/json": {"schema": _ref("ApprovalOptions")}},
            }
        }
    },
    "/v1/servers/{name}/drift": {
        "get": _op(
            "getServerDrift",
            "servers",
            "Dry run of a re-approval: list the upstream's tools now and compare them with the pinned ones "
            "(nothing is pinned or compiled).",
            {
                "200": _json(_ref("ServerDrift"), "What re-approving would change."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
                "502": _error("BadGateway"),
                "504": _error("GatewayTimeout"),
            },
            parameters=[_NAME_PARAM],
        )
    },
    "/v1/api-sources": {
        "get": _op(
            "listApiSources",
            "api-sources",
            "Every registered API source, by name.",
            {"200": _json(_ref("ApiSourceList"), "The API sources.")},
        ),
        "post": _op(
            "registerApiSource",
            "api-sources",
            "Register a REST API described by an OpenAPI 3.0/3.1 document (pending approval); the answer shows "
            "the tools approval would pin.",
            {
                "201": _json(_ref("ApiSource"), "Registered."),
                "400": _error("BadRequest"),
                "409": _error("Conflict"),
            },
            body="ApiSourceRegistration",
        ),
    },
    "/v1/api-sources/{name}": {
        "get": _op(
            "getApiSource",
            "api-sources",
            "One API source with its tools and operations.",
            {
                "200": _json(_ref("ApiSource"), "The API source."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
            },
            parameters=[_NAME_PARAM],
        )
    },
    "/v1/api-sources/{name}/approve": {
        "post": _op(
            "approveApiSource",
            "api-sources",
            "Compile the registered document again, pin its tools and operations, approve, and compile a projection.",
            {
                "200": _json(_ref("ApiSource"), "Approved; `projection_version` is the compiled projection."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
            },
            parameters=[_NAME_PARAM],
        )
        | {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("ApiSourceApproval")}},
            }
        }
    },
    "/v1/policies": {
        "get": _op(
            "listPolicies",
            "policies",
            "Every policy version, newest first, without sources.",
            {
                "200": _json(_ref("PolicyList"), "The versions."),
            },
        ),
        "post": _op(
            "uploadPolicy",
            "policies",
            "Upload a policy version with its tests: `opa check --strict` (a failure stores nothing), `opa fmt` "
            "(a warning), `opa test` with coverage (stored with the version).",
            {
                "201": _json(_ref("PolicyVersion"), "Stored, pending approval."),
                "400": _error("BadRequest"),
            },
            body="PolicyUpload",
        ),
    },
    "/v1/policies/{version}": {
        "get": _op(
            "getPolicy",
            "policies",
            "One policy version with its modules, tests, data, checks and gate.",
            {
                "200": _json(_ref("PolicyVersion"), "The version."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
            },
            parameters=[_VERSION_PARAM],
        )
    },
    "/v1/policies/{version}/approve": {
        "post": _op(
            "approvePolicy",
            "policies",
            "Make the version active (an older one: rollback) and compile a projection; a version that fails "
            "the approval gate is refused (409).",
            {
                "200": _json(_ref("PolicyVersion"), "Active."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
                "409": _error("PolicyGateFailed"),
            },
            parameters=[_VERSION_PARAM],
        )
        | {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("Approval")}},
            }
        }
    },
    "/v1/policies/{a}/diff/{b}": {
        "get": _op(
            "diffPolicies",
            "policies",
            "What changes from version a to version b: per-file unified diffs and the data as a JSON Patch.",
            {
                "200": _json(_ref("PolicyDiff"), "The diff."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
            },
            parameters=[
                _path("a", VERSION, "The version to compare from."),
                _path("b", VERSION, "The version to compare to."),
            ],
        )
    },
    "/v1/policies/{version}/replay": {
        "post": _optional_body(
            _op(
                "replayPolicy",
                "policies",
                "Replay recorded decisions against this version in the background (one replay at a time per scope).",
                {
                    "202": {
                        **_json(_ref("Replay"), "Started; poll the `Location`."),
                        "headers": {
                            "Location": {
                                "description": "`/v1/policies/{version}/replays/{replay_id}`.",
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    "400": _error("BadRequest"),
                    "404": _error("NotFound"),
                    "409": _error("Conflict"),
                },
                parameters=[_VERSION_PARAM],
                body="ReplayRequest",
            )
        )
    },
    "/v1/policies/{version}/replays": {
        "get": _op(
            "listReplays",
            "policies",
            "The replays of this version, newest first (at most 100), without their summaries.",
            {"200": _json(_ref("ReplayList"), "The replays."), "400": _error("BadRequest")},
            parameters=[_VERSION_PARAM],
        )
    },
    "/v1/policies/{version}/replays/{id}": {
        "get": _op(
            "getReplay",
            "policies",
            "One replay: its progress (`total`, `done`) while running, its summary when done.",
            {
                "200": _json(_ref("Replay"), "The replay."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
            },
            parameters=[_VERSION_PARAM, _path("id", _UUID, "The replay's id.")],
        )
    },
    "/v1/projection": {
        "get": _op(
            "getProjection",
            "projection",
            "Desired and active projection versions, per instance.",
            {
                "200": _json(_ref("ProjectionStatus"), "The rollout view."),
            },
        )
    },
    "/v1/audit/decisions": {
        "get": _op(
            "listDecisions",
            "audit",
            "Runtime audit events, newest first, keyset-paginated.",
            {"200": _json(_ref("DecisionPage"), "One page."), "400": _error("BadRequest")},
            parameters=_AUDIT_FILTERS,
        )
    },
    "/v1/audit/stats": {
        "get": _op(
            "getAuditStats",
            "audit",
            "Aggregates of the runtime trail over a time range (default: the last 24 hours; at most 93 days): "
            "decisions per hour by outcome, top denied tools and subjects, denials by reason, p50/p99 latency "
            "by server.",
            {"200": _json(_ref("AuditStats"), "The aggregates."), "400": _error("BadRequest")},
            parameters=[
                *_TRAIL_FILTERS,
                _query("top", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}, "Ranking length."),
            ],
        )
    },
    "/v1/audit/export": {
        "get": _op(
            "exportAudit",
            "audit",
            "The runtime or control-plane trail as a streamed attachment (server-side cursor, constant memory): "
            "NDJSON (one object per line) or CSV (header row, RFC 4180 quoting). A failure after the first byte "
            "ends the body early (an incomplete chunked body).",
            {
                "200": {
                    "description": "The rows, oldest first unless `order=desc`.",
                    "headers": {
                        "Content-Disposition": {
                            "schema": {"type": "string"},
                            "description": '`attachment; filename="audit-<trail>-<UTC time>.<format>"`.',
                        }
                    },
                    "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "400": _error("BadRequest"),
            },
            parameters=[
                _query("format", {"type": "string", "enum": ["ndjson", "csv"], "default": "ndjson"}, "Encoding."),
                _query(
                    "trail",
                    {"type": "string", "enum": ["decisions", "control-plane"], "default": "decisions"},
                    "Which trail; each takes its own filters (those of `/v1/audit/decisions` or of "
                    "`/v1/audit/control-plane`; others are a 400).",
                ),
                _query("order", _ORDER, "`asc` (default): oldest first, as SIEMs ingest; `desc`: newest first."),
                *_TRAIL_FILTERS,
                *[
                    p
                    for p in _CONTROL_PLANE_FILTERS
                    if p["name"] not in {"action", "allowed", "status", "since", "until"}
                ],
            ],
        )
    },
    "/v1/audit/decisions/{decision_id}": {
        "get": _op(
            "getDecision",
            "audit",
            "One audit event joined with OPA's decision-log event.",
            {"200": _json(_ref("Decision"), "The event."), "400": _error("BadRequest"), "404": _error("NotFound")},
            parameters=[_path("decision_id", _text(256), "The decision id.")],
        )
    },
    "/v1/audit/verify": {
        "get": _op(
            "verifyAudit",
            "audit",
            "Verify the hash chains of the three audit streams against their records and the signed "
            "checkpoints (docs/audit-integrity.md): intact with a record count, or the first broken link.",
            {"200": _json(_ref("AuditVerification"), "The report (also when broken)."), "400": _error("BadRequest")},
            parameters=[
                _query("since", {"type": "string", "format": "date-time"}, "Partitions ending after this."),
                _query("until", {"type": "string", "format": "date-time"}, "Partitions starting before this."),
            ],
        )
    },
    "/v1/audit/checkpoints": {
        "get": _op(
            "listAuditCheckpoints",
            "audit",
            "Signed checkpoints of the chain heads, newest first, with the trusted Ed25519 public keys.",
            {"200": _json(_ref("AuditCheckpointPage"), "The checkpoints."), "400": _error("BadRequest")},
            parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 20}, "At most.")],
        ),
        "post": _op(
            "createAuditCheckpoint",
            "audit",
            "Sign a checkpoint of the chain heads now.",
            {"201": _json(_ref("AuditCheckpoint"), "The new checkpoint.")},
        ),
    },
    "/v1/audit/partitions": {
        "get": _op(
            "listAuditPartitions",
            "audit",
            "The audit tables' time partitions (live and dropped by retention), the interval and the retention.",
            {"200": _json(_ref("AuditPartitionList"), "The partitions.")},
        )
    },
    "/v1/audit/retention": {
        "post": _op(
            "applyAuditRetention",
            "audit",
            "Drop the partitions wholly older than the retention period now (recorded in the trail and signed "
            "into a checkpoint).",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["dropped"],
                        "properties": {"dropped": {"type": "array", "items": _ref("AuditPartition")}},
                    },
                    "What was dropped.",
                )
            },
        )
    },
    "/v1/credentials": {
        "get": _credentials_op(
            "listCredentials",
            "credentials",
            "Every credential's metadata (revoked ones too), oldest first; never secret material.",
            {"200": _json(_ref("CredentialList"), "The credentials.")},
        ),
        "post": _credentials_op(
            "createCredential",
            "credentials",
            "Store a credential (write-only): the secret is encrypted under a fresh data key wrapped by the "
            "current KEK; the answer is its metadata.",
            {
                "201": _json(_ref("Credential"), "Stored."),
                "400": _error("BadRequest"),
                "409": _error("Conflict"),
            },
            body="CredentialCreate",
        ),
    },
    "/v1/credentials/rewrap": {
        "post": _credentials_op(
            "rewrapCredentials",
            "credentials",
            "KEK rotation: re-wrap every live credential's data key under the current KEK, online, row by row "
            "(the encrypted secrets are unchanged).",
            {"200": _json(_ref("RewrapResult"), "Counts.")},
        )
    },
    "/v1/credentials/{id}": {
        "get": _credentials_op(
            "getCredential",
            "credentials",
            "One credential's metadata.",
            {
                "200": _json(_ref("Credential"), "The credential."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
            },
            parameters=[_CREDENTIAL_ID],
        ),
        "delete": _credentials_op(
            "revokeCredential",
            "credentials",
            "Revoke: destroy the encrypted secret, delete its bindings, keep the metadata (`revoked_at`). "
            "Revoking again changes nothing.",
            {"204": {"description": "Revoked."}, "400": _error("BadRequest"), "404": _error("NotFound")},
            parameters=[_CREDENTIAL_ID],
        ),
    },
    "/v1/credentials/{id}/rotate": {
        "post": _credentials_op(
            "rotateCredential",
            "credentials",
            "Replace the secret (same id, kind and non-secret config); new fingerprint and `rotated_at`.",
            {
                "200": _json(_ref("Credential"), "Rotated."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
                "409": _error("Conflict"),
            },
            parameters=[_CREDENTIAL_ID],
            body="CredentialRotation",
        )
    },
    "/v1/credentials/{id}/uses": {
        "get": _credentials_op(
            "listCredentialUses",
            "credentials",
            "The newest resolutions of this credential by data planes (the broker's audit): binding, server, "
            "data plane, subject, outcome (`resolved`, `refused`, `failed`) and error category, newest first.",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": {"type": "object"}}},
                    },
                    "The resolutions.",
                ),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
            },
            parameters=[
                _CREDENTIAL_ID,
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "At most this many (100)."),
            ],
        )
    },
    "/v1/credential-bindings": {
        "get": _credentials_op(
            "listCredentialBindings",
            "credentials",
            "The bindings (server, subject selector) -> credential, by server and selector.",
            {"200": _json(_ref("BindingList"), "The bindings."), "400": _error("BadRequest")},
            parameters=[
                _query("server", {"type": "string", "pattern": SERVER_NAME}, "Only this server's bindings."),
                _query("credential_id", _UUID, "Only the bindings to this credential."),
            ],
        ),
        "post": _credentials_op(
            "createCredentialBinding",
            "credentials",
            "Bind a server and subject selector to a live credential.",
            {
                "201": _json(_ref("Binding"), "Bound."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
                "409": _error("Conflict"),
            },
            body="BindingCreate",
        ),
    },
    "/v1/credential-bindings/{id}": {
        "delete": _credentials_op(
            "deleteCredentialBinding",
            "credentials",
            "Delete one binding.",
            {"204": {"description": "Deleted."}, "400": _error("BadRequest"), "404": _error("NotFound")},
            parameters=[_path("id", _UUID, "The binding's id.")],
        )
    },
    "/v1/api-keys": {
        "get": _op(
            "listApiKeys",
            "api-keys",
            "Every API key's metadata (expired and revoked ones too), oldest first; never a key or a hash.",
            {"200": _json(_ref("ApiKeyList"), "The keys.")},
        ),
        "post": _op(
            "createApiKey",
            "api-keys",
            "Create an API key for a machine agent: bound to a subject, roles and an expiry. The key is in this "
            "answer only (`Cache-Control: no-store`); only its argon2id hash is stored.",
            {"201": _json(_ref("ApiKeyCreated"), "Created."), "400": _error("BadRequest")},
            body="ApiKeyCreate",
        ),
    },
    "/v1/api-keys/{id}": {
        "delete": _op(
            "revokeApiKey",
            "api-keys",
            "Revoke a key: data planes refuse it from the returned `projection_version` on.",
            {
                "200": _json(_ref("ApiKey"), "Revoked."),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
                "409": _error("Conflict"),
            },
            parameters=[_path("id", {"type": "string", "pattern": "^[0-9a-f]{16}$"}, "The key's id.")],
        )
    },
    "/v1/opa/bundles/{name}": {
        "get": _op(
            "getBundle",
            "internal",
            "OPA's bundle protocol: the gzipped bundle, signed (`.signatures.json`, docs/signed-bundles.md), "
            "or 304, long-polled.",
            {
                "200": {
                    "description": "The bundle.",
                    "headers": _ETAG_HEADERS,
                    "content": {"application/vnd.openpolicyagent.bundles": {"schema": {"type": "string"}}},
                },
                "304": {"description": "Not modified.", "headers": _ETAG_HEADERS},
                "404": _error("NotFound"),
            },
            parameters=[_path("name", {"type": "string"}, "The configured bundle name."), *_LONG_POLL],
            opa=True,
        )
    },
    "/v1/opa/status": {
        "post": _op(
            "postOpaStatus",
            "internal",
            "OPA's status API: one instance's report, keyed by `labels.id`.",
            {"204": {"description": "Stored."}, "400": _error("BadRequest")},
            body={"type": "object", "required": ["labels"], "properties": {"labels": {"type": "object"}}},
            opa=True,
        )
    },
    "/v1/opa/logs": {
        "post": _op(
            "postOpaDecisionLogs",
            "internal",
            "OPA's decision-log API: a (gzip) JSON array of events, idempotent per `decision_id`.",
            {"204": {"description": "Stored."}, "400": _error("BadRequest")},
            body={"type": "array", "items": {"type": "object"}},
            opa=True,
        )
    },
    "/v1/dataplane/projection": {
        "get": _op(
            "getDataplaneProjection",
            "internal",
            "The data planes' projection feed (routing table), long-polled; records the caller's state.",
            {
                "200": {**_json({"type": "object"}, "The routing table."), "headers": _ETAG_HEADERS},
                "304": {"description": "Not modified.", "headers": _ETAG_HEADERS},
                "400": _error("BadRequest"),
            },
            parameters=[
                _query("dataplane_id", {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}, "", required=True),
                _query("active_version", {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT}, ""),
                _query("error", {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"}, "Error category, if any."),
                _query(
                    "opa_instance",
                    {"type": "string", "pattern": "^[A-Za-z0-9_.:/-]{1,256}$"},
                    "Id of the OPA sidecar this data plane just started (`<dataplane id>/<uuid>`): registered as"
                    " an instance in state `starting`, replacing the data plane's earlier ones, so"
                    " `active_version` stays null until it has activated a bundle.",
                ),
                *_LONG_POLL,
            ],
            internal=True,
        )
    },
    "/v1/dataplane/credentials/resolve": {
        "post": _op(
            "resolveCredential",
            "internal",
            "The credential broker: a data plane resolves a live binding's credential into the material it sends"
            " upstream (headers, query parameters, environment), with how long it may cache it. Audited in"
            " `credential_uses`. The only answer that carries secret material (`Cache-Control: no-store`)."
            " 409 is `conflict` (another version) or `credential_not_connected` (an `oauth_authorization_code`"
            " caller who has not connected yet; the body adds `connect_url`, their single-use connect link).",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["headers", "query", "env", "expires_in"],
                        "properties": {
                            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                            "query": {"type": "object", "additionalProperties": {"type": "string"}},
                            "env": {"type": "object", "additionalProperties": {"type": "string"}},
                            "expires_in": {"type": "number", "minimum": 0},
                        },
                    },
                    "The material.",
                ),
                "400": _error("BadRequest"),
                "404": _error("NotFound"),
                "409": _error("Conflict"),
                "502": _error("BadGateway"),
            },
            body={
                "type": "object",
                "required": ["binding_id", "credential_id", "version", "server", "dataplane_id", "subject"],
                "properties": {
                    "binding_id": {"type": "string"},
                    "credential_id": {"type": "string"},
                    "version": {"type": "string"},
                    "server": {"type": "string"},
                    "dataplane_id": {"type": "string"},
                    "subject": {"type": "object"},
                    "subject_token": {"type": "string"},
                },
            },
            internal=True,
        )
    },
    "/v1/dataplane/session-events": {
        "get": _op(
            "getSessionEvents",
            "internal",
            "The session events feed: `DELETE`s and `logging/setLevel`s of sealed MCP sessions, by session"
            " reference, oldest first; every data plane polls it. `next` is the cursor to ask from (sequence"
            " numbers become visible in commit order, so none is ever skipped).",
            {
                "200": _json(
                    {
                        "type": "object",
                        "required": ["events", "next"],
                        "properties": {
                            "events": {"type": "array", "items": _SESSION_EVENT_OUT},
                            "next": {"type": "integer", "minimum": 0},
                        },
                    },
                    "The events.",
                ),
                "400": _error("BadRequest"),
            },
            parameters=[
                _query(
                    "after", {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT}, "Cursor (0: from the start)."
                ),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Most events (default 1000)."),
            ],
            internal=True,
        ),
        "post": _op(
            "postSessionEvents",
            "internal",
            "A data plane's session events: `ended` (the client's `DELETE`) or `log_level` (its"
            " `logging/setLevel`), each until the session's id expires.",
            {"204": {"description": "Stored."}, "400": _error("BadRequest")},
            body={
                "type": "object",
                "required": ["dataplane_id", "events"],
                "properties": {
                    "dataplane_id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
                    "events": {"type": "array", "minItems": 1, "maxItems": 1000, "items": _SESSION_EVENT_IN},
                },
            },
            internal=True,
        ),
    },
    "/v1/audit/events": {
        "post": _op(
            "ingestAuditEvents",
            "internal",
            "Data planes' runtime audit events; all-or-nothing, idempotent per `decision_id`.",
            {
                "202": _json(
                    {"type": "object", "required": ["accepted"], "properties": {"accepted": {"type": "integer"}}},
                    "Accepted.",
                ),
                "400": _error("BadRequest"),
            },
            body={"type": "array", "maxItems": 10_000, "items": {"type": "object"}},
            internal=True,
        )
    },
}


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI 3.1.0 document of the control plane (a fresh dict each call)."""
    document: dict[str, Any] = orjson.loads(_ENCODED)
    return document


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "MCP OPA gateway control plane",
        "version": "1",
        "description": "Admin API (bearer admin token) and internal API (tag `internal`, `x-internal: true`, "
        "bearer internal token: OPA sidecars and data planes). Every error body is `Error`; malformed "
        f"input is 400 naming the parameter; JSON bodies are at most {MAX_JSON_BODY} bytes "
        "(gzip accepted) and 200 levels deep.",
    },
    "tags": [
        {"name": "meta"},
        {"name": "servers"},
        {
            "name": "api-sources",
            "description": "REST APIs described by OpenAPI, served as MCP tools (docs/api-adapter.md).",
        },
        {"name": "policies"},
        {"name": "projection"},
        {"name": "audit"},
        {"name": "admin", "description": "Admin identity: who am I, role grants (docs/admin-identity.md)."},
        {"name": "credentials", "description": "Write-only upstream credentials and their bindings."},
        {"name": "api-keys", "description": "API keys: data-plane credentials of machine agents."},
        {"name": "oauth", "description": "Per-user OAuth connect pages, opened in a user's browser (no token)."},
        {
            "name": "internal",
            "description": "For data planes (internal token) and OPA sidecars (`/v1/opa/*`, OPA token) only.",
        },
    ],
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "responses": _RESPONSES,
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer", "description": "`control_plane.admin_token`."},
            "internalToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "`control_plane.internal_token` (`GATEWAY_INTERNAL_TOKEN`): data planes' only; "
                "opens `/v1/dataplane/*` (the credential broker among them) and `/v1/audit/events`.",
            },
            "opaToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "`control_plane.opa_token` (`GATEWAY_OPA_TOKEN`; default derived from the internal "
                "token): OPA sidecars'; opens `/v1/opa/*` only.",
            },
        },
    },
}
_ENCODED = orjson.dumps(_DOCUMENT)


async def get_openapi(request: Request) -> Response:
    """``GET /v1/openapi.json`` -> this document (``application/json``), readable without a token."""
    return Response(_ENCODED, media_type="application/json")
