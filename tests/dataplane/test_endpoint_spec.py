"""Spec details of the endpoint found by the conformance suite (issue 6), in process: the real
data-plane app and FeatureGovernor over the doubles of test_features (PDP, upstreams, audit).

* ``-32022`` names ``supported`` and ``requested`` (MCP 2026-07-28 ``basic/versioning``), in both eras;
* an upstream's JSON-RPC error relayed in 2026-07-28 keeps the HTTP status its code maps to
  (the SDK's ``ERROR_CODE_HTTP_STATUS``), the gateway's own refusals stay 200;
* caching hints: ``cacheScope`` is always ``private`` and ``ttlMs`` at most the upstreams'
  (MCP 2026-07-28 ``server/utilities/caching``).
"""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.dataplane.features import FeatureGovernor
from gateway.dataplane.projection import compile_projection
from gateway.devtools.idp import DevIdentityProvider
from gateway.errors import UpstreamUnavailable
from gateway.mcp.messages import HANDSHAKE_VERSIONS
from tests.dataplane.test_endpoint import ENVELOPE, Gateway, _auth, _initialize, _legacy, _modern_headers
from tests.dataplane.test_features import Engine, Upstreams, _projection

pytestmark = pytest.mark.anyio

Answers = dict[tuple[str, str], Any]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> DevIdentityProvider:
    return DevIdentityProvider.create(tmp_path_factory.mktemp("idp"), "https://idp.test.invalid")


@pytest.fixture
async def make(
    idp: DevIdentityProvider, tmp_path: Path
) -> AsyncIterator[Callable[[Answers], tuple[Gateway, httpx.AsyncClient]]]:
    """Builds the endpoint whose upstreams answer ``answers[(server, method)]``."""
    async with httpx.AsyncClient() as cp_http:
        clients: list[httpx.AsyncClient] = []

        def build(answers: Answers) -> tuple[Gateway, httpx.AsyncClient]:
            gateway = Gateway(idp, tmp_path, cp_http)
            upstreams = Upstreams(answers)
            gateway.upstreams = upstreams  # type: ignore[assignment]
            gateway.state["dp_sync"] = types.SimpleNamespace(current=_projection())
            engine = Engine()
            gateway.state["dp_governor"] = FeatureGovernor(gateway.config, engine, upstreams, gateway.audit)  # type: ignore[arg-type]
            clients.append(gateway.client())
            return gateway, clients[-1]

        yield build
        for client in clients:
            await client.aclose()


def _modern(method: str, params: dict[str, Any], meta: dict[str, Any] = ENVELOPE) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 9, "method": method, "params": {**params, "_meta": meta}}


# ------------------------------------------------------------------ -32022


async def test_an_unserved_version_with_the_envelope_is_400_32022_naming_supported_and_requested(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
) -> None:
    gateway, http = make({})
    meta = {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    headers = {**_modern_headers(gateway, "tools/list"), "mcp-protocol-version": "2099-01-01"}
    resp = await http.post("/mcp", json=_modern("tools/list", {}, meta), headers=headers)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (resp.json()["id"], error["code"]) == (9, -32022)
    assert error["data"] == {"supported": ["2026-07-28"], "requested": "2099-01-01"}
    assert gateway.audit.events == [] and gateway.upstreams.calls == []


async def test_an_unserved_version_header_in_a_session_is_400_32022_naming_the_handshake_versions(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
) -> None:
    gateway, http = make({})
    session = await _initialize(http, gateway)
    headers = {**_auth(gateway), "mcp-session-id": session, "mcp-protocol-version": "1999-01-01"}
    resp = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 4, "method": "ping"}, headers=headers)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (resp.json()["id"], error["code"]) == (4, -32022)
    assert error["data"] == {"supported": list(HANDSHAKE_VERSIONS), "requested": "1999-01-01"}


# ------------------------------------------------------------------ status of relayed errors


@pytest.mark.parametrize(
    ("code", "status"),
    [(-32021, 400), (-32602, 400), (-32600, 400), (-32601, 404), (-32000, 200), (-32603, 200)],
)
async def test_a_relayed_upstream_error_keeps_the_status_its_code_maps_to_in_2026(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]], code: int, status: int
) -> None:
    upstream_error = {"code": code, "message": "from upstream", "data": {"requiredCapabilities": {"sampling": {}}}}
    gateway, http = make({("demo", "tools/call"): {"error": upstream_error}})
    params = {"name": "demo__echo", "arguments": {}}
    resp = await http.post(
        "/mcp", json=_modern("tools/call", params), headers=_modern_headers(gateway, "tools/call", "demo__echo")
    )
    assert resp.status_code == status
    assert resp.json() == {"jsonrpc": "2.0", "id": 9, "error": upstream_error}
    [event] = gateway.audit.events
    assert (event["allowed"], event["status"]) == (True, "tool_error")


async def test_a_relayed_32021_on_a_read_is_400_in_2026_and_200_in_a_session(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
) -> None:
    upstream_error = {"code": -32021, "message": "needs sampling", "data": {"requiredCapabilities": {}}}
    gateway, http = make({("demo", "resources/read"): {"error": upstream_error}})
    uri = "mcp-gw://demo/demo://a"
    resp = await http.post(
        "/mcp", json=_modern("resources/read", {"uri": uri}), headers=_modern_headers(gateway, "resources/read", uri)
    )
    assert resp.status_code == 400 and resp.json()["error"] == upstream_error
    session = await _initialize(http, gateway)
    legacy = await _legacy(http, gateway, session, "resources/read", {"uri": uri})
    assert legacy.status_code == 200 and legacy.json()["error"] == upstream_error


async def test_the_gateway_s_own_refusal_stays_200_in_2026(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
) -> None:
    gateway, http = make({})
    uri = "mcp-gw://nowhere/x"
    resp = await http.post(
        "/mcp", json=_modern("resources/read", {"uri": uri}), headers=_modern_headers(gateway, "resources/read", uri)
    )
    assert resp.status_code == 200
    assert (resp.json()["error"]["code"], resp.json()["error"]["data"]["category"]) == (-32602, "unknown_resource")


# ------------------------------------------------------------------ caching hints


def _page(uri: str, ttl: Any = None, cursor: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"resources": [{"uri": uri, "name": uri}], "cacheScope": "public"}
    if ttl is not None:
        result["ttlMs"] = ttl
    if cursor is not None:
        result["nextCursor"] = cursor
    return {"result": result}


async def _list(gateway: Gateway, http: httpx.AsyncClient) -> dict[str, Any]:
    resp = await http.post(
        "/mcp", json=_modern("resources/list", {}), headers=_modern_headers(gateway, "resources/list")
    )
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()["result"]
    return result


async def test_a_list_carries_the_smallest_upstream_ttl_and_is_always_private(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
) -> None:
    answers: Answers = {
        ("demo", "resources/list"): [_page("demo://a", 7000, "c2"), _page("demo://b", 3000)],
        ("other", "resources/list"): _page("file:///x", 5000),
    }
    gateway, http = make(answers)
    result = await _list(gateway, http)
    assert (result["ttlMs"], result["cacheScope"]) == (3000, "private")
    assert len(result["resources"]) == 3


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(_page("file:///x"), id="no-ttl"),
        pytest.param([_page("file:///x", 5000, "c2"), _page("file:///y")], id="a-page-without-ttl"),
        pytest.param(_page("file:///x", -5), id="negative-ttl"),
        pytest.param(_page("file:///x", True), id="boolean-ttl"),
        pytest.param(UpstreamUnavailable("down"), id="failed"),
    ],
)
async def test_a_list_is_ttl_0_unless_every_upstream_gave_a_ttl(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]], other: Any
) -> None:
    gateway, http = make({("demo", "resources/list"): _page("demo://a", 7000), ("other", "resources/list"): other})
    result = await _list(gateway, http)
    assert (result["ttlMs"], result["cacheScope"]) == (0, "private")


async def test_a_handshake_era_list_carries_no_caching_hints(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
) -> None:
    answers: Answers = {
        ("demo", "resources/list"): _page("demo://a", 7000),
        ("other", "resources/list"): _page("file:///x", 5000),
    }
    gateway, http = make(answers)
    session = await _initialize(http, gateway)
    result = (await _legacy(http, gateway, session, "resources/list")).json()["result"]
    assert set(result) == {"resources"}


async def test_a_read_without_an_upstream_ttl_is_ttl_0_and_private(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
) -> None:
    read = {"result": {"contents": [{"uri": "demo://a", "text": "x"}], "cacheScope": "public"}}
    gateway, http = make({("demo", "resources/read"): read})
    uri = "mcp-gw://demo/demo://a"
    resp = await http.post(
        "/mcp", json=_modern("resources/read", {"uri": uri}), headers=_modern_headers(gateway, "resources/read", uri)
    )
    result = resp.json()["result"]
    assert (resp.status_code, result["ttlMs"], result["cacheScope"]) == (200, 0, "private")


# ------------------------------------------------------------------ Mcp-Param-* headers

ROUTE_SCHEMA = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "count": {"type": "integer", "x-mcp-header": "Count"},
        "note": {"type": "string"},
    },
}


def _route_projection() -> Any:
    return compile_projection(
        {
            "version": 5,
            "policy_version": 2,
            "revision": "p5-pv2",
            "servers": [
                {
                    "name": "demo",
                    "transport": "streamable_http",
                    "url": "http://demo/mcp",
                    "tools": [{"name": "route", "inputSchema": ROUTE_SCHEMA}],
                    "capabilities": {},
                }
            ],
        }
    )


async def _route(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
    arguments: dict[str, Any],
    extra: list[tuple[str, str]],
) -> tuple[Gateway, httpx.Response]:
    gateway, http = make({("demo", "tools/call"): {"result": {"content": [], "isError": False}}})
    gateway.state["dp_sync"] = types.SimpleNamespace(current=_route_projection())
    body = _modern("tools/call", {"name": "demo__route", "arguments": arguments})
    headers = [*_modern_headers(gateway, "tools/call", "demo__route").items(), *extra]
    return gateway, await http.post("/mcp", content=orjson.dumps(body), headers=headers)


async def test_mcp_param_headers_that_mirror_the_arguments_are_served(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
) -> None:
    arguments = {"region": "eu west", "count": 42, "note": "n"}
    extra = [("Mcp-Param-Region", "=?base64?ZXUgd2VzdA==?="), ("mcp-param-count", "42.0")]
    gateway, resp = await _route(make, arguments, extra)
    assert resp.status_code == 200 and resp.json()["result"]["isError"] is False, resp.text
    assert [(server, method) for server, method, _ in gateway.upstreams.calls] == [("demo", "tools/call")]


@pytest.mark.parametrize(
    ("arguments", "extra", "message"),
    [
        pytest.param({"region": "eu"}, [], "Mcp-Param-Region header is missing", id="missing"),
        pytest.param({"region": "eu"}, [("Mcp-Param-Region", "us")], "does not match", id="different"),
        pytest.param({}, [("Mcp-Param-Region", "eu")], "argument is absent", id="no-argument"),
        pytest.param({"count": 4}, [("Mcp-Param-Count", "4"), ("Mcp-Param-Count", "5")], "more than once", id="twice"),
    ],
)
async def test_mcp_param_headers_that_disagree_with_the_body_are_400_32020_and_never_governed(
    make: Callable[[Answers], tuple[Gateway, httpx.AsyncClient]],
    arguments: dict[str, Any],
    extra: list[tuple[str, str]],
    message: str,
) -> None:
    gateway, resp = await _route(make, arguments, extra)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == -32020 and message in error["message"], error
    assert gateway.audit.events == [] and gateway.upstreams.calls == []
