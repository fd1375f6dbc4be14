"""``Mcp-Param-*`` headers to a 2026-07-28 upstream (SEP-2243), over the scripted HttpClient double
of test_upstream. The scripted upstream checks the headers with the SDK's own server-side rule
(``validate_mcp_param_headers``) and refuses a mismatch with 400 ``-32020``, before the tool runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from mcp.shared.inbound import validate_mcp_param_headers

from gateway.mcp.upstream import StreamableHttpUpstream
from tests.mcp.test_upstream import Http, Reply, _json, _result

pytestmark = pytest.mark.anyio

ROUTE = {
    "name": "route",
    "inputSchema": {
        "type": "object",
        "properties": {"region": {"type": "string", "x-mcp-header": "Region"}, "text": {"type": "string"}},
    },
}
PLAIN = {"name": "plain", "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}


class Modern:
    """A 2026-07-28 upstream listing ``PLAIN`` then ``ROUTE`` on two pages; records the tools it ran."""

    def __init__(self) -> None:
        self.ran: list[dict[str, Any]] = []

    def __call__(self, method: str, headers: Mapping[str, str], req: dict[str, Any] | None) -> Reply:
        assert req is not None
        params = req["params"]
        if req["method"] == "server/discover":
            return _result(req, {"supportedVersions": ["2026-07-28"], "capabilities": {}})
        if req["method"] == "tools/list":
            if params.get("cursor") == "p2":
                return _result(req, {"tools": [ROUTE]})
            return _result(req, {"tools": [PLAIN], "nextCursor": "p2"})
        tool = ROUTE if params["name"] == "route" else PLAIN
        mismatch = validate_mcp_param_headers(tool["inputSchema"], params["arguments"], headers)
        if mismatch is not None or params["arguments"].get("text") == "refuse":
            error = {"code": -32020, "message": mismatch.message if mismatch else "refused"}
            return _json({"jsonrpc": "2.0", "id": req["id"], "error": error}, 400)
        self.ran.append(params["arguments"])
        return _result(req, {"content": [], "isError": False})


def _sent(http: Http) -> list[tuple[str, str | None]]:
    """(method, Mcp-Param-Region header) of every request sent."""
    return [(msg["method"], headers.get("Mcp-Param-Region")) for _, headers, msg in http.requests if msg]


async def test_the_headers_are_learnt_from_the_upstream_s_tools_list_once_then_sent_with_every_call() -> None:
    server = Modern()
    http = Http(server)
    upstream = StreamableHttpUpstream("http://u/mcp", http, timeout=5)
    first = await upstream.request("tools/call", {"name": "route", "arguments": {"region": "eu-west"}})
    second = await upstream.request("tools/call", {"name": "route", "arguments": {"region": "Zürich"}})
    assert "result" in first and "result" in second
    assert _sent(http) == [
        ("server/discover", None),
        ("tools/call", None),
        ("tools/list", None),
        ("tools/list", None),
        ("tools/call", "eu-west"),
        ("tools/call", "=?base64?WsO8cmljaA==?="),
    ]
    assert server.ran == [{"region": "eu-west"}, {"region": "Zürich"}]


async def test_a_32020_that_no_header_can_fix_is_relayed_without_a_retry() -> None:
    server = Modern()
    http = Http(server)
    upstream = StreamableHttpUpstream("http://u/mcp", http, timeout=5)
    reply = await upstream.request("tools/call", {"name": "plain", "arguments": {"text": "refuse"}})
    assert reply["error"] == {"code": -32020, "message": "refused"}
    assert [method for method, _ in _sent(http)].count("tools/call") == 1 and server.ran == []


async def test_a_relayed_tools_list_makes_the_headers_be_learnt_again() -> None:
    server = Modern()
    http = Http(server)
    upstream = StreamableHttpUpstream("http://u/mcp", http, timeout=5)
    await upstream.request("tools/call", {"name": "route", "arguments": {"region": "eu"}})
    await upstream.request("tools/list", {})
    del http.requests[:]
    reply = await upstream.request("tools/call", {"name": "route", "arguments": {"region": "us"}})
    assert "result" in reply
    assert _sent(http) == [("tools/call", None), ("tools/list", None), ("tools/list", None), ("tools/call", "us")]
