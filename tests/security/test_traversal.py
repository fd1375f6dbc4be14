"""Path traversal in names: every route answers 4xx (never 5xx), registers nothing, writes
nothing outside its own directory and reaches no upstream.

Targets are sent byte for byte (``..``, ``%2f``, ``%2e``, NUL, backslashes), so neither the
client nor this test normalises them first.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import orjson
import pytest

from gateway.devtools.stack import LocalStack
from tests.security.helpers import (
    assert_bad_request_naming,
    call_body,
    call_headers,
    marker,
    opa_headers,
    raw_request,
    recorded,
    upstream_saw,
)

pytestmark = [pytest.mark.integration, pytest.mark.db]

DATA_PLANE_TARGETS = [
    "/mcp/..%2f..%2fetc",
    "/mcp/..%2F..%2Fetc%2Fpasswd",
    "/mcp/../v1/servers",
    "/mcp/..",
    "/mcp/.",
    "/mcp/%2e%2e",
    "/mcp/%2e%2e%2fv1%2fservers",
    "/mcp/%252e%252e%252fv1",
    "/mcp/demo%2f..%2f..%2fetc",
    "/mcp/x%2f..%2fdemo",
    "/mcp/x/../demo",
    "/mcp/demo/../demo",
    "/mcp/..;/v1/servers",
    "/mcp/..\\..\\etc",
    "/mcp/demo%00",
    "/mcp/demo%00/../demo",
]
CONTROL_PLANE_TARGETS = [
    ("GET", "/v1/servers/..%2f..%2fetc"),
    ("GET", "/v1/servers/.."),
    ("GET", "/v1/servers/%2e%2e"),
    ("GET", "/v1/servers/../policies"),
    ("GET", "/v1/servers/demo%2f..%2f..%2fpolicies"),
    ("GET", "/v1/servers/x%2f..%2fdemo"),
    ("GET", "/v1/servers/x/../demo"),
    ("GET", "/v1/servers/demo%00"),
    ("GET", "/v1/policies/..%2f1"),
    ("GET", "/v1/policies/1%2f..%2f1"),
    ("GET", "/v1/audit/decisions/..%2f..%2fservers"),
    ("GET", "/v1/audit/decisions/.."),
    ("POST", "/v1/servers/..%2fdemo/approve"),
    ("POST", "/v1/servers/%2e%2e/approve"),
    ("POST", "/v1/servers/x%2f..%2fdemo/approve"),
    ("POST", "/v1/policies/..%2f1/approve"),
]
BUNDLE_TARGETS = [
    "/v1/opa/bundles/..%2f..%2fservers",
    "/v1/opa/bundles/../../v1/servers",
    "/v1/opa/bundles/gateway%2f..%2fgateway",
    "/v1/opa/bundles/gateway/../gateway",
    "/v1/opa/bundles/..%2fgateway",
    "/v1/opa/bundles/%2e%2e/gateway",
]
SERVER_NAMES = [
    "../x",
    "..",
    ".",
    "x/../y",
    "../../etc/passwd",
    "demo/..",
    "demo/../demo",
    "/etc",
    "..%2fx",
    "%2e%2e",
    "x\\..\\y",
    "..\u2215x",
    "demo\x00",
]
"""Names ``POST /v1/servers`` must refuse (U+2215 is a division slash that looks like ``/``)."""


async def _server_names(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [r["name"] for r in await conn.fetch("SELECT name FROM mcp_servers ORDER BY name")]
    finally:
        await conn.close()


def _is_client_error(status: int) -> bool:
    return 400 <= status < 500


def test_traversal_in_data_plane_paths_is_4xx_and_reaches_no_upstream(http: httpx.Client, stack: LocalStack) -> None:
    token = stack.idp.mint("alice", ["admin"], stack.audience)
    before = recorded(http, stack)["mcp_request_count"]
    text = marker("traversal")
    body = orjson.dumps(call_body("demo__echo", {"text": text}))
    headers = {**call_headers("demo__echo", token), "content-type": "application/json"}
    for target in DATA_PLANE_TARGETS:
        for method in ("POST", "GET", "DELETE"):
            status, answer = raw_request(stack.data_port, method, target, headers, body if method == "POST" else b"")
            assert _is_client_error(status), (method, target, status, answer)
    assert not upstream_saw(http, stack, text)
    assert recorded(http, stack)["mcp_request_count"] == before


def test_traversal_in_admin_paths_is_4xx_and_reaches_no_upstream(http: httpx.Client, stack: LocalStack) -> None:
    before = recorded(http, stack)["mcp_request_count"]
    for method, target in CONTROL_PLANE_TARGETS:
        status, answer = raw_request(stack.control_port, method, target, stack.admin_headers)
        assert _is_client_error(status), (method, target, status, answer)
    assert recorded(http, stack)["mcp_request_count"] == before


def test_traversal_in_the_bundle_name_never_serves_a_bundle(stack: LocalStack) -> None:
    assert raw_request(stack.control_port, "GET", "/v1/opa/bundles/gateway", opa_headers(stack))[0] == 200
    for target in BUNDLE_TARGETS:
        status, answer = raw_request(stack.control_port, "GET", target, opa_headers(stack))
        assert status == 404, (target, status, answer)


@pytest.mark.parametrize("name", SERVER_NAMES, ids=[ascii(n) for n in SERVER_NAMES])
def test_a_server_name_with_traversal_is_refused_and_nothing_is_registered(
    http: httpx.Client, stack: LocalStack, name: str
) -> None:
    registered = asyncio.run(_server_names(stack.database_url))
    before = recorded(http, stack)["mcp_request_count"]
    body = {"name": name, "transport": "streamable_http", "url": stack.upstream_url, "description": "traversal"}
    created = http.post(f"{stack.control_url}/v1/servers", json=body, headers=stack.admin_headers)
    assert_bad_request_naming(created, "name")
    for segment in {quote(name, safe=""), quote(name, safe="/.\\")}:  # one path segment, and as typed
        for method, target in (("GET", f"/v1/servers/{segment}"), ("POST", f"/v1/servers/{segment}/approve")):
            status, answer = raw_request(stack.control_port, method, target, stack.admin_headers)
            assert _is_client_error(status), (method, target, status, answer)
    assert asyncio.run(_server_names(stack.database_url)) == registered
    assert recorded(http, stack)["mcp_request_count"] == before


def test_a_policy_file_name_with_traversal_is_refused_and_nothing_is_written_or_stored(
    http: httpx.Client, stack: LocalStack
) -> None:
    versions = http.get(f"{stack.control_url}/v1/policies", headers=stack.admin_headers).json()["items"]
    source = 'package gateway\n\ndefault decision := {"allow": true, "reasons": ["x"], "obligations": {}}\n'
    escaped = f"escaped-{uuid.uuid4().hex}"
    for name in (
        f"../{escaped}.rego",
        f"../../{escaped}.rego",
        f"gateway/../../../{escaped}.rego",
        f"/tmp/{escaped}.rego",
        f"./{escaped}.rego",
        f"gateway//{escaped}.rego",
        f"..\\{escaped}.rego",
    ):
        resp = http.post(
            f"{stack.control_url}/v1/policies", json={"modules": {name: source}}, headers=stack.admin_headers
        )
        assert_bad_request_naming(resp, "file name")
    assert http.get(f"{stack.control_url}/v1/policies", headers=stack.admin_headers).json()["items"] == versions
    # Where the upload would land if a name escaped the validator's temporary directory.
    tmp = Path(tempfile.gettempdir())
    assert not list(tmp.glob(f"{escaped}.rego")) and not list(tmp.glob(f"*/{escaped}.rego"))
