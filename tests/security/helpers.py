"""Requests the security suite sends to the running gateway, and what it reads back."""

from __future__ import annotations

import json
import time
import uuid
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import httpx

from gateway.config import OPA_TOKEN_LABEL, Secret, derived_token
from gateway.devtools.stack import LocalStack

__all__ = [
    "ENVELOPE",
    "MODERN",
    "admin_get",
    "assert_bad_request_naming",
    "assert_unauthorized",
    "call_body",
    "call_headers",
    "internal_headers",
    "marker",
    "post_call",
    "raw_request",
    "recorded",
    "upstream_saw",
    "wait_audited",
    "written_by_gateway",
]

MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}
"""The per-request ``_meta`` envelope of 2026-07-28 (``basic/index``)."""


def marker(label: str) -> str:
    """A unique string to plant in a request and look for afterwards."""
    return f"{label}-{uuid.uuid4().hex}"


def call_body(tool: str, arguments: dict[str, Any], request_id: int = 1) -> dict[str, Any]:
    """A 2026-07-28 ``tools/call`` JSON-RPC request (with the ``_meta`` envelope)."""
    params = {"name": tool, "arguments": arguments, "_meta": ENVELOPE}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def call_headers(tool: str, token: str | None = None) -> dict[str, str]:
    """The 2026-07-28 headers of a ``tools/call`` (plus ``Authorization`` when ``token`` is given)."""
    headers = {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": tool}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


def post_call(
    http: httpx.Client,
    stack: LocalStack,
    token: str | None,
    tool: str,
    arguments: dict[str, Any],
    *,
    path: str = "/mcp",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST one stateless ``tools/call`` to the data plane."""
    return http.post(
        f"{stack.data_url}{path}",
        json=call_body(tool, arguments),
        headers={**call_headers(tool, token), **(headers or {})},
    )


def recorded(http: httpx.Client, stack: LocalStack) -> dict[str, Any]:
    """What the sample upstream received (``GET /_recorded``, see ``deploy/demo/sample_upstream.py``)."""
    return http.get(f"http://127.0.0.1:{stack.upstream_port}/_recorded").json()  # type: ignore[no-any-return]


def upstream_saw(http: httpx.Client, stack: LocalStack, needle: str) -> bool:
    """Whether any ``tools/call`` the sample upstream received carries ``needle`` in its arguments."""
    return any(needle in json.dumps(call["arguments"]) for call in recorded(http, stack)["calls"])


def assert_unauthorized(stack: LocalStack, resp: httpx.Response, *, token_sent: bool, path: str = "/mcp") -> None:
    """401 ``unauthenticated`` with an RFC 6750/9728 ``WWW-Authenticate`` challenge."""
    assert resp.status_code == 401, resp.text
    assert resp.json() == {"error": "unauthenticated"}
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{stack.data_url}/.well-known/oauth-protected-resource{path}"' in challenge
    assert ('error="invalid_token"' in challenge) is token_sent


def admin_get(http: httpx.Client, stack: LocalStack, path: str, params: Any = None) -> httpx.Response:
    """GET on the admin API with the admin token."""
    return http.get(f"{stack.control_url}{path}", params=params, headers=stack.admin_headers)


def internal_headers(stack: LocalStack) -> dict[str, str]:
    """The bearer header data planes present to the control plane."""
    return {"authorization": f"Bearer {stack.extra_env['GATEWAY_INTERNAL_TOKEN']}"}


def opa_headers(stack: LocalStack) -> dict[str, str]:
    """The bearer header OPA sidecars present to the control plane (``/v1/opa/*``): the OPA
    token the gateway derives from the internal token."""
    token = derived_token(Secret(stack.extra_env["GATEWAY_INTERNAL_TOKEN"]), OPA_TOKEN_LABEL)
    return {"authorization": f"Bearer {token.reveal()}"}


def assert_bad_request_naming(resp: httpx.Response | tuple[int, bytes], parameter: str) -> None:
    """400 with a control-plane error body whose message names ``parameter``."""
    status, body = (resp.status_code, resp.content) if isinstance(resp, httpx.Response) else resp
    assert status == 400, body
    doc = json.loads(body)
    assert doc["error"] == "bad_request", doc
    assert parameter in doc["message"], doc


def raw_request(port: int, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """Send ``target`` byte for byte (no client-side normalisation of ``..`` or ``%2f``)."""
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_audited(
    http: httpx.Client, stack: LocalStack, subject: str, count: int, *, timeout: float = 15
) -> list[dict[str, Any]]:
    """Wait (bounded) until ``subject`` has ``count`` ``tools/call`` audit events and OPA's log of each
    one that OPA decided has arrived; return those events (newest first)."""
    deadline = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        resp = admin_get(http, stack, "/v1/audit/decisions", {"subject": subject, "action": "tools/call"})
        items = resp.json()["items"]
        decided = [i for i in items if i["policy_revision"]]
        if len(items) >= count and all(i["opa_logged"] for i in decided):
            assert len(items) == count, items
            return items
        time.sleep(0.1)
    raise AssertionError(f"audit of {subject} incomplete after {timeout}s: {items}")


def written_by_gateway(stack: LocalStack) -> list[Path]:
    """Every file below the stack's run directory but the sample upstream's log: the gateway's
    log, its OPA sidecar's work directory and log, the audit spool, the IdP files."""
    return [p for p in sorted(stack.run_dir.rglob("*")) if p.is_file() and p.name != "upstream.log"]
