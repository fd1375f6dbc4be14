"""Hostile input on every control-plane route is a 400 naming the parameter, never a 500."""

from __future__ import annotations

import base64
import logging
import socket
from typing import Any

import httpx
import orjson
import pytest

from gateway.config import Config
from tests.controlplane.helpers import (
    ADMIN_TOKEN,
    INTERNAL_TOKEN,
    OPA_TOKEN,
    asgi_controlplane,
    poll,
    served_controlplane,
)

pytestmark = [pytest.mark.anyio, pytest.mark.db]

NUL = "a\x00b"


def _cursor(timestamp: Any, decision_id: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([timestamp, decision_id])).decode().rstrip("=")


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


async def _check(client: httpx.AsyncClient, method: str, path: str, kwargs: dict[str, Any], param: str) -> list[str]:
    """Return ``[]`` when the request got a 400 ``bad_request`` whose message names ``param``, else a description."""
    try:
        r = await client.request(method, path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the in-process transport re-raises what became a 500
        return [f"{method} {path} {str(kwargs)[:120]}: raised {exc!r}"[:300]]
    body = r.json()
    if r.status_code != 400 or body["error"] != "bad_request" or param not in body["message"]:
        return [f"{method} {path} {str(kwargs)[:120]}: {r.status_code} {body}"]
    return []


ADMIN_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    # (method, path, httpx kwargs, parameter the message must name)
    ("GET", "/v1/audit/decisions", {"params": {"subject": NUL}}, "subject"),
    ("GET", "/v1/audit/decisions", {"params": {"server": NUL}}, "server"),
    ("GET", "/v1/audit/decisions", {"params": {"tool": NUL}}, "tool"),
    ("GET", "/v1/audit/decisions", {"params": {"action": NUL}}, "action"),
    ("GET", "/v1/audit/decisions", {"params": {"subject": "s" * 5000}}, "subject"),
    ("GET", "/v1/audit/decisions", {"params": {"limit": "²"}}, "limit"),
    ("GET", "/v1/audit/decisions", {"params": {"limit": "٣"}}, "limit"),
    ("GET", "/v1/audit/decisions", {"params": {"limit": "9" * 400}}, "limit"),
    ("GET", "/v1/audit/decisions", {"params": {"since": "0001-01-01T00:00:00+01:00"}}, "since"),
    ("GET", "/v1/audit/decisions", {"params": {"until": "9999-12-31T23:59:59-01:00"}}, "until"),
    ("GET", "/v1/audit/decisions", {"params": {"since": "2026-01-01T00:00:00\x00Z"}}, "since"),
    ("GET", "/v1/audit/decisions", {"params": {"cursor": _cursor("2026-01-01T00:00:00Z", NUL)}}, "cursor"),
    ("GET", "/v1/audit/decisions", {"params": {"cursor": _cursor("9999-12-31T23:59:59-01:00", "d")}}, "cursor"),
    ("GET", "/v1/audit/decisions", {"params": {"cursor": _cursor("0001-01-01T00:00:00+01:00", "d")}}, "cursor"),
    ("GET", "/v1/audit/decisions", {"params": {"cursor": "\x00"}}, "cursor"),
    ("GET", "/v1/audit/decisions/a%00b", {}, "control characters"),
    ("GET", "/v1/servers/a%00b", {}, "control characters"),
    ("GET", "/v1/servers/a%0A", {}, "control characters"),  # refused before any route
    ("POST", "/v1/servers/a%00b/approve", {}, "control characters"),
    ("POST", "/v1/servers", {"json": {"name": "a\n", "transport": "streamable_http", "url": "http://x/"}}, "name"),
    ("POST", "/v1/servers", {"json": {"name": "a", "transport": "streamable_http", "url": "http://x/\x00"}}, "url"),
    (
        "POST",
        "/v1/servers",
        {"json": {"name": "a", "transport": "streamable_http", "url": "http://x/", "description": NUL}},
        "description",
    ),
    ("POST", "/v1/servers", {"json": {"name": "a", "transport": ["streamable_http"], "url": "http://x/"}}, "transport"),
    ("POST", "/v1/servers", {"json": {"name": "a", "transport": "streamable_http", "url": "http://x:99999/"}}, "url"),
    ("GET", "/v1/policies/²", {}, "version"),
    ("GET", "/v1/policies/99999999999999999999", {}, "version"),
    ("POST", "/v1/policies/²/approve", {}, "version"),
    ("POST", "/v1/policies", {"json": {"modules": {"a.rego": "package gateway\n"}, "data": {"k": NUL}}}, "data"),
    ("POST", "/v1/policies", {"json": {"modules": {"a.rego": "package gateway\n"}, "data": {NUL: 1}}}, "data"),
    (
        "POST",
        "/v1/policies",
        {"json": {"modules": {"a.rego": "package gateway\n"}, "data": {"k": _nested(300)}}},
        "body",
    ),
]


async def test_malformed_admin_input_is_400_naming_the_parameter(cp_config: Config) -> None:
    wrong: list[str] = []
    async with asgi_controlplane(cp_config) as (admin, _, _):
        for method, path, kwargs, param in ADMIN_CASES:
            wrong += await _check(admin, method, path, kwargs, param)
    assert wrong == [], "\n".join(wrong)


def _event(**overrides: Any) -> dict[str, Any]:
    event = {
        "decision_id": "dec-1",
        "timestamp": "2026-03-01T12:00:00Z",
        "tenant": "tenant_local",
        "environment": "prod",
        "allowed": True,
    }
    return {**event, **overrides}


INTERNAL_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("GET", "/v1/dataplane/projection", {"params": {"dataplane_id": "dp", "active_version": "²"}}, "active_version"),
    ("GET", "/v1/dataplane/projection", {"params": {"dataplane_id": "dp\n"}}, "dataplane_id"),
    ("GET", "/v1/dataplane/projection", {"params": {"dataplane_id": "dp", "error": "x\n"}}, "error"),
    ("POST", "/v1/opa/status", {"json": {"labels": {"id": NUL}}}, "labels.id"),
    ("POST", "/v1/opa/status", {"json": {"labels": {"id": "o"}, "bundles": {"gateway": {"message": NUL}}}}, "NUL"),
    (
        "POST",
        "/v1/opa/status",
        {"json": {"labels": {"id": "o"}, "bundles": {"gateway": {"errors": _nested(300)}}}},
        "body",
    ),
    ("POST", "/v1/opa/logs", {"json": [{"decision_id": "d", "input": _nested(300)}]}, "body"),
    ("POST", "/v1/audit/events", {"json": _nested(300)}, "body"),
    ("POST", "/v1/audit/events", {"json": [_event(projection_version=2**63)]}, "projection_version"),
    ("POST", "/v1/audit/events", {"json": [_event(timestamp="9999-12-31T23:59:59-01:00")]}, "timestamp"),
]


async def test_malformed_internal_input_is_400_naming_the_parameter(cp_config: Config) -> None:
    wrong: list[str] = []
    opa = {"headers": {"Authorization": f"Bearer {OPA_TOKEN}"}}
    async with asgi_controlplane(cp_config) as (_, internal, _):
        for method, path, kwargs, param in INTERNAL_CASES:
            if path.startswith("/v1/opa/"):
                kwargs = {**kwargs, **opa}
            wrong += await _check(internal, method, path, kwargs, param)
    assert wrong == [], "\n".join(wrong)


async def test_timestamps_at_the_edges_of_the_calendar_are_accepted_when_they_fit(cp_config: Config) -> None:
    async with asgi_controlplane(cp_config) as (admin, _, _):
        r = await admin.get(
            "/v1/audit/decisions",
            params={"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59.999999999Z", "limit": "500"},
        )
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}


async def test_a_client_disconnecting_mid_body_logs_one_info_line_and_no_error(
    cp_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with served_controlplane(cp_config) as base:
        port = int(base.rsplit(":", 1)[1])
        request = (
            f"POST /v1/audit/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {INTERNAL_TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n[{"
        ).encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)

        async def disconnect_logged() -> bool:
            return any("disconnected" in r.getMessage() for r in caplog.records)

        await poll(disconnect_logged, timeout=10, interval=0.05)
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_newline_in_the_path_still_gets_the_control_planes_json_errors(cp_config: Config) -> None:
    async with served_controlplane(cp_config) as base, httpx.AsyncClient(base_url=base) as client:
        bad_name = await client.get("/v1/servers/a%0Ab", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        no_token = await client.get("/v1/servers/a%0Ab")
    assert bad_name.status_code == 400 and bad_name.headers["content-type"] == "application/json"
    assert bad_name.json()["message"] == "the request path contains control characters"
    # Refused before authentication too: string classification and the router never disagree.
    assert no_token.status_code == 400 and no_token.json()["error"] == "bad_request"
